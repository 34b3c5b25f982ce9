"""Every hostile store of :mod:`hostile_stores` is refused with a ModelFormatError, or decodes exactly.

Each case is loaded with ``nm.load`` and the model is then decoded whole and over a region, browsed
through its lazy pyramid, shown as an active-blocks overlay and saved elsewhere. Every exception must
be a :class:`napari_miner.ModelFormatError` naming the store; whatever succeeds must give exactly what
the undamaged store gives (never garbage pixels, never silently fewer MLPs); a damaged store must be
refused at the latest when its damaged part is read. Cases that claim huge sizes run in a subprocess
(this module run as a script, :func:`child_main`) whose address space is limited to its size after
the imports plus 1.5 GiB, so that any allocation in proportion to what a store claims (rather than
to what it holds) fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hostile_stores as hs
import numpy as np
import pytest
import torch

import napari_miner as nm

HEADROOM = 3 << 29  # 1.5 GiB
LIMITED = sys.platform.startswith("linux")


# ----------------------------------------------------------------------------- exercising
REGION = (slice(0, 8), slice(0, 8))
"""The region decoded (level-0 pixels)."""
ACTIONS = ("decode", "region", "pyramid", "labels", "save")
"""What is done with a loaded model, in this order (after ``load``)."""


def _mlps(model: Any) -> np.ndarray:
    """Every bank's MLPs as one vector: which blocks have one, then their weights and biases."""
    parts = []
    for bank in (bank for level in model.levels for bank in (level, *level.extra)):
        present, weights, biases = bank.gather(torch.arange(bank.grid.n_blocks))
        parts += [present.numpy().astype(np.float32)]
        parts += [t.numpy().reshape(-1) for t in (*weights, *biases)]
    return np.concatenate(parts)


def _run(action: str, model: Any, other: Path) -> np.ndarray:
    from napari_miner.core.overlay import active_block_labels

    if action == "decode":
        return model.decode(0)
    if action == "region":
        return model.decode(0, region=REGION)
    if action == "pyramid":
        return model.as_pyramid()[0][:8, :8].compute(scheduler="synchronous")
    if action == "labels":
        return active_block_labels(model)[0]
    if action == "save":
        model.save(other)
        return nm.load(other).decode(0)
    raise ValueError(action)


def model_outputs(model: Any) -> dict[str, np.ndarray]:
    """What a valid store gives for every action (``save``: the decode of the saved copy)."""
    outputs = {"n_mlps": np.array([level.n_mlps for level in model.levels]), "mlps": _mlps(model)}
    outputs.update({a: _run(a, model, Path()) for a in ACTIONS if a != "save"})
    outputs["save"] = outputs["decode"]
    return outputs


def _compare(found: np.ndarray, expected: np.ndarray) -> str:
    found = np.asarray(found)
    if found.shape != expected.shape:
        return f"different (shape {found.shape} instead of {expected.shape})"
    if found.dtype == expected.dtype and np.array_equal(found, expected):
        return "same"
    if found.dtype != expected.dtype and np.array_equal(found.astype(expected.dtype), expected):
        return f"converted to {found.dtype.str}"
    return "different"


def _describe(error: BaseException) -> str:
    return f"error {type(error).__name__}: {error}"


def outcomes(
    path: Path, other: Path, expected: dict[str, np.ndarray], max_pixels: int = 10**7
) -> dict[str, str]:
    """Load the store at ``path`` and do every action; how each compares with ``expected``.

    Values are ``"same"``, ``"converted to <dtype>"``, ``"different..."``, ``"skipped"`` or
    ``"error <Type>: <message>"``. The full decode and the save are skipped for a model larger than
    ``max_pixels`` (they would legitimately need memory in proportion to its size).
    """
    result: dict[str, str] = {}
    try:
        model = nm.load(path)
    except Exception as error:  # noqa: BLE001 - every exception is an outcome here
        return {"load": _describe(error)}
    result["load"] = "ok"
    counts = np.array([level.n_mlps for level in model.levels])
    result["n_mlps"] = _compare(counts, expected["n_mlps"])
    large = math.prod(model.shape) > max_pixels
    if not large:
        try:
            result["mlps"] = _compare(_mlps(model), expected["mlps"])
        except Exception as error:  # noqa: BLE001
            result["mlps"] = _describe(error)
    for action in ACTIONS:
        if large and action in ("decode", "save"):
            result[action] = "skipped"
            continue
        try:
            result[action] = _compare(_run(action, model, other), expected[action])
        except Exception as error:  # noqa: BLE001
            result[action] = _describe(error)
    return result


def limit_address_space(headroom: int) -> int:
    """Limit this process's address space to its current size plus ``headroom`` bytes (Linux)."""
    import resource

    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def child_main(spec_file: str, result_file: str) -> None:
    """Run cases under a memory limit (in a subprocess, see :func:`absurd_results`)."""
    import dask.array  # noqa: F401 - imported before the limit, as a running viewer would have
    import numcodecs.blosc  # noqa: F401
    import zarr  # noqa: F401

    import napari_miner.core.overlay  # noqa: F401
    import napari_miner.io.lazy  # noqa: F401
    import napari_miner.io.legacy  # noqa: F401

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    expected = {}
    for base, npz in spec["expected"].items():
        with np.load(npz) as data:
            expected[base] = {key: data[key] for key in data.files}
    warm = spec["warm_up"]  # a valid store: everything a load and a decode touch is set up
    outcomes(Path(warm["path"]), Path(warm["other"]), expected[warm["base"]])
    limit_address_space(int(spec["headroom"]))
    try:  # the limit works: memory in proportion to a claim of 2 GiB is refused
        np.ones(2 << 30, dtype=np.uint8)
        effective = False
    except MemoryError:
        effective = True
    results: dict[str, Any] = {"limit effective": effective}
    results.update(
        {
            case["name"]: outcomes(Path(case["path"]), Path(case["other"]), expected[case["base"]])
            for case in spec["cases"]
        }
    )
    Path(result_file).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The base stores, what they give, and the reference of an unfinished tile."""
    directory = tmp_path_factory.mktemp("hostile")
    bases = hs.build_bases(directory / "bases")
    expected = {name: model_outputs(nm.load(path)) for name, path in bases.items()}
    reference = hs.materialize(hs.CASE_NAMES["fitting-record-deleted"], bases, directory / "ref")
    expected["unfinished"] = model_outputs(nm.load(reference))
    assert expected["unfinished"]["n_mlps"][0] < expected["fitting"]["n_mlps"][0]
    return directory, bases, expected


def _expected(case: hs.Case, expected: dict) -> dict:
    return expected["unfinished" if case.expect == "unfinished" else case.base]


def check(case: hs.Case, path: Path, results: dict[str, str]) -> None:
    """Assert that the outcomes of a case are what it expects (see the module docstring)."""
    names = (str(path), os.path.realpath(path))
    errors = {action: r for action, r in results.items() if r.startswith("error")}
    for action, message in errors.items():
        assert message.startswith("error ModelFormatError:"), (case.name, action, message)
        assert any(name in message for name in names), (case.name, action, message)
    others = {a: r for a, r in results.items() if a not in errors and r not in ("ok", "skipped")}
    if case.expect == "error":
        assert errors, f"{case.name} ({case.what}) was not detected: {results}"
        if others.get("n_mlps", "same") != "same":
            # the MLP count that the tile records state (known before any tile is read) may be
            # forged, but then reading the tiles must be refused: never fewer MLPs unnoticed
            assert results["mlps"].startswith("error"), (case.name, results)
            del others["n_mlps"]
        assert all(r == "same" for r in others.values()), (case.name, results)
    elif case.expect == "same_values":
        assert not errors, (case.name, results)
        for action, outcome in others.items():
            wanted = "same" if action in ("n_mlps", "mlps", "labels") else "converted to"
            assert outcome.startswith(wanted), (case.name, action, outcome)
    else:
        assert not errors and all(r == "same" for r in others.values()), (case.name, results)
        assert set(results) == {"load", "n_mlps", "mlps", *ACTIONS}, results


IN_PROCESS = [pytest.param(case, id=case.name) for case in hs.CASES if not case.absurd]
ABSURD = [case for case in hs.CASES if case.absurd]


@pytest.mark.parametrize("case", IN_PROCESS)
def test_hostile_store(case, corpus, tmp_path):
    directory, bases, expected = corpus
    path = hs.materialize(case, bases, tmp_path)
    results = outcomes(path, tmp_path / "copy.miner.zarr", _expected(case, expected))
    check(case, path, results)


@pytest.fixture(scope="module")
def absurd_results(corpus):
    """Run every absurd case in one subprocess under the address-space limit."""
    directory, bases, expected = corpus
    work = directory / "absurd"
    work.mkdir()
    npz = {}
    for base in hs.BASES:
        npz[base] = str(work / f"{base}.npz")
        np.savez(npz[base], **expected[base])
    cases = []
    for case in ABSURD:
        case_dir = work / case.name
        case_dir.mkdir()
        path = hs.materialize(case, bases, case_dir)
        cases.append(
            {
                "name": case.name,
                "base": case.base,
                "path": str(path),
                "other": str(case_dir / "copy.miner.zarr"),
            }
        )
    warm = {"base": "model", "path": str(bases["model"]), "other": str(work / "warm.miner.zarr")}
    spec = {"expected": npz, "cases": cases, "warm_up": warm, "headroom": HEADROOM}
    (work / "spec.json").write_text(json.dumps(spec))
    script = Path(__file__)
    completed = subprocess.run(
        [sys.executable, str(script), str(work / "spec.json"), str(work / "results.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    assert results["limit effective"], "the address-space limit did not stop a 2 GiB allocation"
    return {case["name"]: (Path(case["path"]), results[case["name"]]) for case in cases}


@pytest.mark.skipif(not LIMITED, reason="address-space limits are set through Linux /proc")
@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in ABSURD])
def test_absurd_store_under_memory_limit(case, absurd_results):
    path, results = absurd_results[case.name]
    check(case, path, results)


def test_the_corpus_covers_the_issue():
    names = set(hs.CASE_NAMES)
    for needed in (
        "zarray-filter-pickle",
        "zarray-compressor-zlib",
        "zarray-compressor-gzip",
        "zarray-compressor-lzma",
        "zarray-compressor-zstd",
        "config-n_levels-20",
        "layout-2e6-fitting",
        "config-block_size-2**31",
        "tile_blocks-huge",
        "tile_blocks-zero",
        "tile_blocks-negative",
        "layout-value-min-NaN-string",
        "layout-value-min-above-max",
        "layout-value-max-inf",
        "record-truncated",
        "record-too-long",
        "record-deleted",
        "params-bomb-nbytes",
        "params-NaN-rehashed",
        "params-dir-symlink",
        "chunk-symlink",
        "chunk-fifo",
        "zattrs-100MB",
        "zattrs-not-json",
        "zattrs-json-list",
        # quantised levels and banks
        "code-above-grid-rehashed-main",
        "scale-32767-rehashed-main",
        "scale-1025-rehashed-main",
        "zarray-dtype-<f4",
        "zarray-scales-dtype-<f4",
        "array-missing-main-scales",
        "bits-0",
        "bits-3",
        "bits-17",
        "bits-string",
        "bits-bool",
        "bits-float",
        "bits-null",
        "bank-missing-0-main",
        "bank-unknown-split2",
        "record-v2-size",
    ):
        assert needed in names
    assert {case.base for case in hs.CASES} == set(hs.BASES)
    assert len(hs.CASES) >= 400


# --------------------------------------------------------------- never outside the store
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_save_of_a_loaded_model_never_reads_through_a_link(corpus, tmp_path):
    _, bases, expected = corpus
    path = tmp_path / "m.miner.zarr"
    shutil.copytree(bases["complete"], path)
    model = nm.load(path)
    # after loading, the params array is swapped for a link to a directory outside the store that
    # holds the same files: the store has changed under the model, and nothing is read through it
    outside = tmp_path / "outside"
    shutil.move(path / "levels" / "0" / "main" / "params", outside)
    os.symlink(outside, path / "levels" / "0" / "main" / "params")
    with pytest.raises(nm.ModelFormatError, match="link"):
        model.save(tmp_path / "copy.miner.zarr")
    assert not (tmp_path / "copy.miner.zarr").exists()
    with pytest.raises(nm.ModelFormatError, match="link"):
        model.decode(0)
    # a chunk file swapped for a link (same content) is not read either
    os.unlink(path / "levels" / "0" / "main" / "params")
    shutil.move(outside, path / "levels" / "0" / "main" / "params")
    chunk = path / "levels" / "0" / "main" / "params" / "3.3.0"
    shutil.move(chunk, tmp_path / "chunk")
    os.symlink(tmp_path / "chunk", chunk)
    with pytest.raises(nm.ModelFormatError, match="link"):
        model.save(tmp_path / "copy.miner.zarr")
    chunk.unlink()
    shutil.move(tmp_path / "chunk", chunk)
    model.save(tmp_path / "copy.miner.zarr")
    np.testing.assert_array_equal(
        nm.load(tmp_path / "copy.miner.zarr").decode(0), expected["complete"]["decode"]
    )


def test_resumed_fit_never_writes_through_a_link(corpus, tmp_path):
    _, bases, _ = corpus
    path = tmp_path / "m.miner.zarr"
    shutil.copytree(bases["fitting"], path)
    outside = tmp_path / "outside"
    shutil.move(path / "levels" / "0" / "main" / "params", outside)
    os.symlink(outside, path / "levels" / "0" / "main" / "params")
    before = _snapshot(outside)
    with pytest.raises(nm.ModelFormatError, match="link"):
        nm.fit(hs.fitting_data(), hs.TINY, store=path, **hs.FIT_KWARGS)
    assert _snapshot(outside) == before
    assert (path / "levels" / "0" / "main" / "params").is_symlink()
    # replacing it (overwrite=True) removes the link, never what it points to
    model = nm.fit(hs.fitting_data(), hs.TINY, store=path, overwrite=True, **hs.FIT_KWARGS)
    assert _snapshot(outside) == before
    assert not (path / "levels" / "0" / "main" / "params").is_symlink()
    assert nm.load(path).metadata["fit_status"] == "complete" and model.n_parameters > 0


def test_overwriting_a_hostile_store_never_deletes_outside_it(corpus, tmp_path):
    _, bases, _ = corpus
    path = hs.materialize(hs.CASE_NAMES["params-dir-symlink"], bases, tmp_path)
    outside = tmp_path / "outside"
    before = _snapshot(outside)
    assert before
    nm.load(bases["model"]).save(path)
    assert _snapshot(outside) == before
    assert not any(p.is_symlink() for p in path.rglob("*"))
    nm.load(path).decode(0)


def test_a_store_path_that_is_a_link_is_read(corpus, tmp_path):
    _, bases, expected = corpus
    link = tmp_path / "link.miner.zarr"
    os.symlink(bases["model"], link)
    np.testing.assert_array_equal(nm.load(link).decode(0), expected["model"]["decode"])


def test_a_fifo_never_blocks_a_reader(corpus, tmp_path):
    # a named pipe that appears after the store was listed is not opened for a blocking read
    _, bases, _ = corpus
    path = tmp_path / "m.miner.zarr"
    shutil.copytree(bases["model"], path)
    model = nm.load(path)
    chunk = path / "levels" / "0" / "main" / "params" / "0.0.0"
    chunk.unlink()
    os.mkfifo(chunk)
    with pytest.raises(nm.ModelFormatError, match="regular file|cannot be read"):
        model.decode(0)


if __name__ == "__main__":  # pragma: no cover - the child process of absurd_results
    child_main(sys.argv[1], sys.argv[2])
