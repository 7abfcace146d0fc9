"""The generated kernel instantiations agree with their manifest and with the other two places that list tiles:
cuda/instantiations/generate.py writes exactly the committed attn_*.cu files, the warp-specialized kernels'
head-dim tiles there are the kSm90Ws rows of cuda/host/kernel_table.h, and CMakeLists.txt builds the
warp-specialized backward for those tiles only. A tile added in one place and not the others fails here, on any
machine, instead of as a link error or a missing kernel on a GPU."""

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
INSTANTIATIONS = ROOT / "cuda" / "instantiations"


def _generate_module():
    spec = importlib.util.spec_from_file_location("generate", INSTANTIATIONS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_tiles(kind: str, variant: str) -> set:
    text = (ROOT / "cuda" / "host" / "kernel_table.h").read_text()
    rows = re.findall(rf"\{{KernelKind::{kind}, KernelVariant::{variant}, (\d+), (\d+),", text)
    return {(int(d), int(dv)) for d, dv in rows}


def test_generate_py_writes_exactly_the_committed_files(tmp_path):
    shutil.copy(INSTANTIATIONS / "generate.py", tmp_path / "generate.py")
    subprocess.run([sys.executable, str(tmp_path / "generate.py")], check=True)
    generated = {p.name: p.read_text() for p in tmp_path.glob("attn_*.cu")}
    committed = {p.name: p.read_text() for p in INSTANTIATIONS.glob("attn_*.cu")}
    assert sorted(generated) == sorted(committed)
    for name, text in generated.items():
        assert committed[name] == text, name


def test_warp_specialized_tiles_match_the_kernel_table():
    generate = _generate_module()
    assert set(generate.SM90A_DIRECTIONS["fwd_sm90_ws"][3]) == _table_tiles("kFwd", "kSm90Ws")
    assert set(generate.SM90A_DIRECTIONS["bwd_sm90_ws"][3]) == _table_tiles("kBwdDkDv", "kSm90Ws")
    # The ordered-sums mode of the same kernel (the deterministic backward) has the same tiles.
    assert set(generate.SM90A_DIRECTIONS["bwd_sm90_ws_ordered"][3]) == _table_tiles("kBwdDkDv", "kSm90Ws")


def test_cmake_builds_the_warp_specialized_backward_for_its_tiles_only():
    generate = _generate_module()
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(r'_dir MATCHES "\^bwd_sm90_ws" AND NOT _hdim MATCHES "\^\(([0-9|x]+)\)\$"', text)
    assert match, "CMakeLists.txt: the bwd_sm90_ws (and bwd_sm90_ws_ordered) head-dim rule"
    names = {generate.hdim_name(d, dv) for d, dv in generate.SM90A_DIRECTIONS["bwd_sm90_ws"][3]}
    assert set(match.group(1).split("|")) == names
