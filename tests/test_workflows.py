"""Every example workflow in workflows/ is a loadable UI-format graph: known node types, widget values that match
each node's widgets (count, order, ranges), links consistent on both ends and typed, required inputs wired,
and it converts to an API prompt ComfyUI accepts (tests/test_comfyui.py runs one for real)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from comfyui_harness import UI_ONLY_VALUES, ui_to_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
# COMBO widgets listing the user's files (input folder, model folders): a workflow may name any file there.
FOLDER_COMBOS = {"pose_file", "checkpoint", "motion_module", "lora", "encoder"}

# ComfyUI core nodes the example workflows may use (v0.3.64, frontend 1.27): the names of the values the frontend
# saves in widgets_values (UI-only ones included), socket inputs (name → type), output types, output node?
CORE_NODES = {
    "LoadVideo": (["file", "upload"], {}, ["VIDEO"], False),
    "GetVideoComponents": ([], {"video": "VIDEO"}, ["IMAGE", "AUDIO", "FLOAT"], False),
    "LoadImage": (["image", "upload"], {}, ["IMAGE", "MASK"], False),
    "PreviewImage": ([], {"images": "IMAGE"}, [], True),
    "CreateVideo": (["fps"], {"images": "IMAGE", "audio": "AUDIO"}, ["VIDEO"], False),
    "SaveVideo": (["filename_prefix", "format", "codec"], {"video": "VIDEO"}, [], True),
    "SaveAnimatedWEBP": (["filename_prefix", "fps", "lossless", "quality", "method"], {"images": "IMAGE"}, [], True),
    "CheckpointLoaderSimple": (["ckpt_name"], {}, ["MODEL", "CLIP", "VAE"], False),
    "CLIPTextEncode": (["text"], {"clip": "CLIP"}, ["CONDITIONING"], False),
    "Note": (["text"], {}, [], False),
    "MarkdownNote": (["text"], {}, [], False),
}
REQUIRED_CORE_SOCKETS = {"GetVideoComponents": {"video"}, "PreviewImage": {"images"}, "CreateVideo": {"images"},
                         "SaveVideo": {"video"}, "SaveAnimatedWEBP": {"images"}, "CLIPTextEncode": {"clip"}}


def load_pack():
    name = "finephys_pack_workflow_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.NODE_CLASS_MAPPINGS


PACK_NODES = load_pack()


def is_widget(spec) -> bool:
    return isinstance(spec[0], (list, tuple)) or spec[0] in WIDGET_TYPES


def pack_node_info(cls):
    """(saved value names, widget specs by name, sockets name → type, required sockets, outputs, output node)."""
    inputs = cls.INPUT_TYPES()
    saved, widgets, sockets, required = [], {}, {}, set()
    for sect in ("required", "optional"):
        for name, spec in inputs.get(sect, {}).items():
            if is_widget(spec):
                saved.append(name)
                widgets[name] = spec
                opts = spec[1] if len(spec) > 1 else {}
                if spec[0] == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    saved.append("control_after_generate")
            else:
                sockets[name] = spec[0]
                if sect == "required":
                    required.add(name)
    return saved, widgets, sockets, required, list(cls.RETURN_TYPES), bool(getattr(cls, "OUTPUT_NODE", False))


def node_info(node_type: str):
    if node_type in PACK_NODES:
        return pack_node_info(PACK_NODES[node_type])
    if node_type in CORE_NODES:
        saved, sockets, outputs, output_node = CORE_NODES[node_type]
        return saved, {}, sockets, REQUIRED_CORE_SOCKETS.get(node_type, set()), outputs, output_node
    raise AssertionError(f"unknown node type {node_type!r}: not a FinePhys node nor a listed ComfyUI core node")


def check_widget_value(where: str, name: str, spec, value) -> None:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, (list, tuple)):
        if name not in FOLDER_COMBOS:
            assert value in kind, f"{where}: {name}={value!r} is not one of {list(kind)}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {name}={value!r}"
        if kind == "INT":
            assert float(value).is_integer(), f"{where}: {name}={value!r} is not an integer"
        assert opts.get("min", -float("inf")) <= value <= opts.get("max", float("inf")), f"{where}: {name}={value}"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {name}={value!r}"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {name}={value!r}"


def saved_value_names(workflow: dict) -> dict:
    return {n["type"]: node_info(n["type"])[0] for n in workflow["nodes"]}


def test_there_are_workflows():
    assert [w.name for w in WORKFLOWS if w.name.startswith("finephys_pose_refine")], WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_consistent(path):
    check_workflow(json.loads(path.read_text()), path.name)


def check_workflow(wf: dict, name: str) -> None:
    path = Path(name)
    assert wf.get("version") == 0.4 and isinstance(wf["nodes"], list) and isinstance(wf["links"], list)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max([link[0] for link in wf["links"]] or [0])
    links = {}
    for link in wf["links"]:
        assert len(link) == 6 and link[0] not in links, f"bad or duplicate link {link}"
        links[link[0]] = link
    output_nodes = 0
    for node in wf["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties", "widgets_values"):
            assert key in node, f"{where}: no {key!r}"
        saved, widgets, sockets, required, outputs, output_node = node_info(node["type"])
        output_nodes += output_node and node["mode"] == 0
        values = node["widgets_values"]
        assert len(values) == len(saved), f"{where}: {len(values)} widget values for {saved}"
        for name, value in zip(saved, values):
            if name not in UI_ONLY_VALUES and name in widgets:
                check_widget_value(where, name, widgets[name], value)
        linked = set()
        for slot, inp in enumerate(node.get("inputs") or []):
            name = inp["name"]
            if "widget" in inp:
                assert inp["widget"]["name"] == name and (name in widgets or name in saved), f"{where}: {name}"
            else:
                assert sockets.get(name) == inp["type"], f"{where}: input {name}: {inp['type']} vs {sockets.get(name)}"
            if inp.get("link") is not None:
                link = links[inp["link"]]
                assert link[3] == node["id"] and link[4] == slot, f"{where}: link {link} does not end at slot {slot}"
                assert link[5] == inp["type"], f"{where}: link {link} carries {link[5]}, input takes {inp['type']}"
                linked.add(name)
        assert required <= linked, f"{where}: required inputs not connected: {sorted(required - linked)}"
        assert [o["type"] for o in node.get("outputs") or []] == outputs, f"{where}: outputs"
        for slot, out in enumerate(node.get("outputs") or []):
            for lid in out.get("links") or []:
                assert links[lid][1] == node["id"] and links[lid][2] == slot, f"{where}: output link {lid}"
    for lid, (_, src, slot, dst, dslot, kind) in links.items():
        assert src in nodes and dst in nodes, f"link {lid} joins missing nodes"
        assert lid in (nodes[src]["outputs"][slot].get("links") or []), f"link {lid} not listed on its source"
        assert nodes[src]["outputs"][slot]["type"] == kind, f"link {lid} type"
        assert nodes[dst]["inputs"][dslot]["link"] == lid, f"link {lid} not on its target input"
    assert output_nodes >= 1, "a workflow needs an output node to queue"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_converts_to_api_prompt(path):
    wf = json.loads(path.read_text())
    prompt = ui_to_api(wf, saved_value_names(wf))
    for node_id, entry in prompt.items():
        saved, widgets, sockets, required, _, _ = node_info(entry["class_type"])
        expected = {n for n in saved if n not in UI_ONLY_VALUES} | required
        assert expected <= set(entry["inputs"]), f"{node_id}: missing {expected - set(entry['inputs'])}"
        for value in entry["inputs"].values():
            if isinstance(value, list):
                assert value[0] in prompt, f"{node_id} links to a node that is not sent: {value}"


EXPECTED_FAILURE = {"widget_count": "widget values for", "combo_value": "'fastest' is not one of",
                    "link_slot": "does not end at slot", "link_type": "carries FINEPHYS_POSE2D",
                    "unknown_type": "unknown node type 'FinePhysFuse'", "unwired_input": "not connected",
                    "range": "weight=1.5"}


@pytest.mark.parametrize("breakage", ["widget_count", "combo_value", "link_slot", "link_type", "unknown_type",
                                      "unwired_input", "range"])
def test_checker_catches_broken_workflows(breakage):
    import copy

    wf = copy.deepcopy(json.loads((ROOT / "workflows" / "finephys_pose_refine.json").read_text()))
    nodes = {n["type"]: n for n in wf["nodes"]}
    detect, fuse = nodes["FinePhysDetectPose2D"], nodes["FinePhysFusePoses"]
    if breakage == "widget_count":
        detect["widgets_values"].pop()
    elif breakage == "combo_value":
        detect["widgets_values"][0] = "fastest"
    elif breakage == "link_slot":
        wf["links"][0][4] += 1
    elif breakage == "link_type":
        next(link for link in wf["links"] if link[3] == fuse["id"])[5] = "FINEPHYS_POSE2D"
    elif breakage == "unknown_type":
        fuse["type"] = "FinePhysFuse"
    elif breakage == "unwired_input":
        link_id = fuse["inputs"][0]["link"]
        fuse["inputs"][0]["link"] = None
        wf["links"] = [link for link in wf["links"] if link[0] != link_id]
        for node in wf["nodes"]:
            for out in node.get("outputs") or []:
                out["links"] = [x for x in out.get("links") or [] if x != link_id]
    elif breakage == "range":
        fuse["widgets_values"][0] = 1.5
    with pytest.raises(AssertionError, match=EXPECTED_FAILURE[breakage]):
        check_workflow(wf, f"broken_{breakage}.json")


def test_ui_to_api_by_hand():
    wf = {"nodes": [
        {"id": 1, "type": "A", "mode": 0, "widgets_values": [3, "randomize", "x"], "inputs": []},
        {"id": 2, "type": "B", "mode": 0, "widgets_values": [0.5], "inputs": [
            {"name": "a", "type": "T", "link": 7}, {"name": "w", "type": "FLOAT", "widget": {"name": "w"}, "link": 8}]},
        {"id": 3, "type": "B", "mode": 4, "widgets_values": [0.1], "inputs": []}],
        "links": [[7, 1, 0, 2, 0, "T"], [8, 1, 1, 2, 1, "FLOAT"]]}
    names = {"A": ["seed", "control_after_generate", "name"], "B": ["w"]}
    assert ui_to_api(wf, names) == {"1": {"class_type": "A", "inputs": {"seed": 3, "name": "x"}},
                                    "2": {"class_type": "B", "inputs": {"w": ["1", 1], "a": ["1", 0]}}}
    with pytest.raises(ValueError, match="2 widget values"):
        ui_to_api({"nodes": [{"id": 1, "type": "B", "widgets_values": [1, 2]}], "links": []}, names)
