"""The ``napari-miner`` command line, called in-process through ``main`` (and once as a process)."""

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from miner_test_data import smooth

import napari_miner as nm
from napari_miner import cli

FIT = ["--max-steps", "20", "--levels", "2", "--block-size", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def gray():
    return ((smooth((48, 40), frequency=5.0) + 1) * 100).astype(np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gray):
    """A small fitted model, saved once for the info/decode/export tests."""
    path = tmp_path_factory.mktemp("model") / "gray.miner.zarr"
    model = nm.fit(gray, nm.MinerConfig(n_levels=3, block_size=8, max_steps=20), device="cpu")
    model.save(path)
    return path, nm.load(path)


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("napari-miner: error: ")
    return lines[0]


# --------------------------------------------------------------------------------------- fit
def test_fit_zarr_input_prints_json_summary(tmp_path, gray, capsys):
    source = tmp_path / "gray.zarr"
    zarr.create_array(str(source), data=gray, chunks=(16, 16))
    output = tmp_path / "fit.miner.zarr"
    assert cli.main(["fit", str(source), str(output), *FIT, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # not a terminal: no progress bars
    summary = json.loads(captured.out.strip())
    assert summary["output"] == str(output)
    assert summary["input"] == "gray.zarr"
    assert summary["shape"] == [48, 40] and summary["dtype"] == "uint8"
    assert summary["psnr"] > 15 and summary["elapsed_s"] > 0
    assert summary["reason"] in ("target", "plateau", "max_steps") and summary["iou"] is None
    assert 0 < summary["train_time_s"] <= summary["elapsed_s"] and summary["levels"] == 2
    model = nm.load(output)
    assert summary["parameters"] == model.n_parameters
    assert model.shape == (48, 40) and model.config.max_steps == 20 and model.n_levels == 2


def test_fit_png_and_npy_inputs(tmp_path, capsys):
    from skimage import data
    from skimage import io as skio

    png = tmp_path / "astronaut.png"
    skio.imsave(str(png), data.astronaut()[::16, ::16])  # 32x32x3
    assert cli.main(["fit", str(png), str(tmp_path / "rgb.miner.zarr"), *FIT]) == 0
    assert capsys.readouterr().out == ""  # quiet without --json
    model = nm.load(tmp_path / "rgb.miner.zarr")
    assert model.is_rgb and model.shape == (32, 32, 3)

    npy = tmp_path / "volume.npy"
    np.save(npy, smooth((20, 20, 20), frequency=4.0).astype(np.float32))
    output = tmp_path / "volume.miner.zarr"
    argv = ["fit", str(npy), str(output), "--volume", "--no-occupancy", *FIT, "--seed", "3"]
    assert cli.main(argv) == 0
    config = nm.load(output).config
    assert config.block_size == 16 and config.hidden_width == 20 and config.seed == 3
    assert config.target_iou is None


def test_fit_zarr_group_component_and_overrides(tmp_path, gray):
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("images/gray", data=gray, chunks=(16, 16))
    output = tmp_path / "fit.miner.zarr"
    argv = ["fit", str(tmp_path / "group.zarr"), str(output), *FIT, "--component", "images/gray"]
    argv += ["--hidden-width", "8", "--target-psnr", "25"]
    assert cli.main(argv) == 0
    config = nm.load(output).config
    assert config.hidden_width == 8 and config.target_psnr == 25.0
    assert config.weight_bits == nm.MinerConfig().weight_bits  # quantised by default


@pytest.mark.parametrize(("bits", "expected"), [("6", 6), ("float32", None), ("FLOAT32", None)])
def test_weight_bits_option(bits, expected):
    from napari_miner.cli.commands import config_from_args
    from napari_miner.cli.parser import build_parser

    args = build_parser().parse_args(["fit", "in.zarr", "out.miner.zarr", "--weight-bits", bits])
    assert config_from_args(args).weight_bits == expected


def test_fit_resumes_or_refuses_an_existing_output(tmp_path, gray, capsys):
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    output = tmp_path / "fit.miner.zarr"
    assert cli.main(["fit", str(source), str(output), *FIT]) == 0
    before = nm.load(output).decode()
    # the same fit again: the store is complete, nothing is trained, nothing changes
    assert cli.main(["fit", str(source), str(output), *FIT, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(output)
    np.testing.assert_array_equal(nm.load(output).decode(), before)
    # another fit into it is refused unless --overwrite
    assert cli.main(["fit", str(source), str(output), *FIT, "--seed", "5"]) == 1
    assert "--overwrite" in _error_line(capsys)
    assert cli.main(["fit", str(source), str(output), *FIT, "--overwrite", "--seed", "5"]) == 0
    assert nm.load(output).config.seed == 5

    not_a_model = tmp_path / "precious"
    not_a_model.mkdir()
    (not_a_model / "data.txt").write_text("keep")
    assert cli.main(["fit", str(source), str(not_a_model), *FIT, "--overwrite"]) == 1
    assert "not a napari-miner model" in _error_line(capsys)
    assert (not_a_model / "data.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("missing.zarr", "no such file or directory"), ("notes.txt", "cannot read")],
)
def test_fit_bad_input(tmp_path, capsys, path, expected):
    (tmp_path / "notes.txt").write_text("not an image")
    argv = ["fit", str(tmp_path / path), str(tmp_path / "out.miner.zarr"), *FIT]
    assert cli.main(argv) == 1
    assert expected in _error_line(capsys)
    assert not (tmp_path / "out.miner.zarr").exists()


def test_fit_component_of_a_file_input(tmp_path, gray, capsys):
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    argv = ["fit", str(source), str(tmp_path / "o.miner.zarr"), *FIT, "--component", "a"]
    assert cli.main(argv) == 1
    assert "only applies to zarr stores, not to the file" in _error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--workers", "2", "--scheduler", "tcp://x:1"], "not allowed with"),
        (["--memory-budget", "lots"], "memory size"),
        (["--max-steps", "0"], "positive integer"),
        (["--weight-bits", "eight"], "number of bits (4 to 16) or 'float32'"),
        (["--no-occupancy"], "--volume"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_fit_usage_errors(tmp_path, gray, capsys, extra, expected):
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    assert cli.main(["fit", str(source), str(tmp_path / "o.miner.zarr"), *FIT, *extra]) == 2
    assert expected in _error_line(capsys)


def test_fit_memory_budget_too_small(tmp_path, gray, capsys):
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    argv = ["fit", str(source), str(tmp_path / "o.miner.zarr"), *FIT, "--memory-budget", "1kB"]
    assert cli.main(argv) == 1
    assert "memory_budget=1000 bytes is too small" in _error_line(capsys)
    assert not (tmp_path / "o.miner.zarr").exists()


def test_fit_on_two_local_workers_matches_one_process(tmp_path, gray, capsys):
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    tiles = ["--tile-blocks", "1", "--block-size", "16"]
    single, spread = tmp_path / "single.miner.zarr", tmp_path / "spread.miner.zarr"
    assert cli.main(["fit", str(source), str(single), *FIT, *tiles]) == 0
    assert cli.main(["fit", str(source), str(spread), *FIT, *tiles, "--workers", "2"]) == 0
    np.testing.assert_array_equal(nm.load(spread).decode(), nm.load(single).decode())


def test_memory_budget_is_read_by_the_api(monkeypatch):
    from napari_miner import api
    from napari_miner.cli import parser

    seen = []
    real = api.parse_memory_budget
    monkeypatch.setattr(api, "parse_memory_budget", lambda text: seen.append(text) or real(text))
    assert parser.memory_size(" 512MB ") == 512_000_000 and seen == ["512MB"]
    assert parser.memory_size("2GiB") == 2 * 1024**3
    assert parser.memory_size("1.5 GB") == 1_500_000_000
    assert parser.memory_size("4096") == 4096


@pytest.mark.parametrize("bad", ["", " ", "lots", "0", "-1MB"])
def test_bad_memory_budget_is_a_usage_error(tmp_path, capsys, bad):
    argv = [
        "fit",
        str(tmp_path / "in.npy"),
        str(tmp_path / "o.miner.zarr"),
        f"--memory-budget={bad}",
    ]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert "argument --memory-budget:" in line and "memory size" in line


def test_a_store_being_written_is_refused(tmp_path, gray, capsys):
    from napari_miner.io.atomic import PathLock

    source = tmp_path / "gray.npy"
    np.save(source, gray)
    output = tmp_path / "fit.miner.zarr"
    lock = PathLock(output).acquire("fitted")  # another fit writing OUTPUT
    try:
        assert cli.main(["fit", str(source), str(output), *FIT]) == 1
        line = _error_line(capsys)
        assert f"{output} is being fitted by another process" in line
        assert "wait until it has finished" in line
        assert not output.exists()
    finally:
        lock.release()
    assert cli.main(["fit", str(source), str(output), *FIT]) == 0  # free again


def test_progress_bars_and_final_line_on_a_terminal(tmp_path, gray, capsys, monkeypatch):
    from napari_miner.cli import report

    monkeypatch.setattr(report, "stderr_is_tty", lambda: True)  # capsys still captures stderr
    source = tmp_path / "gray.npy"
    np.save(source, gray)
    output = tmp_path / "fit.miner.zarr"
    assert cli.main(["fit", str(source), str(output), *FIT, "--target-psnr", "10"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "fitting gray.npy (48x40 uint8)" in err
    assert "level 1 (" in err and "level 0 (" in err and "/20" in err
    assert "PSNR=" in err and "active=" in err
    counts: dict[str, list[int]] = {}
    for level, done in re.findall(r"(level \d) \(.*?\|\s*(\d+)/20", err.replace("\r", "\n")):
        counts.setdefault(level, []).append(int(done))
    assert set(counts) == {"level 0", "level 1"}
    assert all(c == sorted(c) for c in counts.values())  # a bar never goes back
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"saved {output}: PSNR ") and "(target reached)" in last
    assert f"{nm.load(output).n_parameters:,} parameters" in last


def _bars_text(run) -> str:
    from napari_miner.cli.report import FitBars

    buffer = io.StringIO()
    bars = FitBars(True, file=buffer)
    for _ in run:
        bars.update(run.progress)
    assert run.progress.finished and bars._bar is None
    return buffer.getvalue()


def test_progress_bars_count_steps_of_whole_levels(gray):
    run = nm.fit_iter(gray, nm.MinerConfig(n_levels=2, block_size=16, max_steps=20), device="cpu")
    text = _bars_text(run)
    assert "level 1 (" in text and "level 0 (" in text and "/20" in text and "PSNR=" in text
    assert "tile" not in text


def test_progress_bars_count_tiles_of_tiled_levels(gray, tmp_path):
    config = nm.MinerConfig(n_levels=2, block_size=16, max_steps=10)
    store = tmp_path / "tiled.miner.zarr"
    run = nm.fit_iter(gray, config, device="cpu", store=store, tile_blocks=1)
    text = _bars_text(run)
    assert "level 0 (" in text and "9/9" in text and "tile=" in text and "tile/s" in text


def test_final_line_says_whether_the_target_was_reached():
    from napari_miner.cli.report import fit_line
    from napari_miner.fitting.progress import FitProgress

    progress = FitProgress(2, 20, (3, 3), psnr=31.234, elapsed_s=2.0)
    progress.finished, progress.reason = True, "plateau"
    line = fit_line("a.miner.zarr", progress, 12345, 3.25)
    assert line == (
        "saved a.miner.zarr: PSNR 31.23 dB (plateau: target 40 dB not reached (more capacity: "
        "raise max_splits, split_width or hidden_width)), 12,345 parameters, 3.2 s"
    )
    volume = nm.MinerConfig.for_volume()
    progress.target_iou = volume.target_iou
    progress.reason, progress.iou = "target", 0.995
    line = fit_line("v.miner.zarr", progress, 10, 1.0)
    assert "PSNR 31.23 dB, IoU 0.9950 (target reached)" in line
    progress.reason = "completed"
    line = fit_line("v.miner.zarr", progress, 10, 1.0)
    assert "(completed: target 40 dB or IoU 0.99 not reached)" in line


# -------------------------------------------------------------------------------------- info
def test_info_table_and_json(saved, capsys):
    path, model = saved
    assert cli.main(["info", str(path)]) == 0
    table = capsys.readouterr().out
    assert "48x40 uint8" in table and f"{model.n_parameters:,}" in table
    assert "PSNR (dB)" in table and "block_size" in table and "input_sha256" in table
    assert len([line for line in table.splitlines() if line.lstrip()[:1].isdigit()]) >= 3

    assert cli.main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [48, 40] and info["parameters"] == model.n_parameters
    assert [row["shape"] for row in info["levels"]] == [[48, 40], [24, 20], [12, 10]]
    assert sum(row["parameters"] for row in info["levels"]) == model.n_parameters
    assert info["levels"][0]["psnr"] == pytest.approx(model.levels[0].stats["psnr"])
    assert info["config"] == model.config.to_dict()
    assert info["metadata"]["input_sha256"] == model.metadata["input_sha256"]


def test_info_missing_model(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nothing.miner.zarr")]) == 1
    assert "nothing.miner.zarr" in _error_line(capsys)


# ------------------------------------------------------------------------------------ decode
def test_decode_region_to_npy(saved, tmp_path):
    path, model = saved
    output = tmp_path / "region.npy"
    argv = ["decode", str(path), str(output), "--level", "1", "--region", "2:14, 5:"]
    assert cli.main(argv) == 0
    expected = model.decode(1, region=(slice(2, 14), slice(5, 20)))
    np.testing.assert_array_equal(np.load(output), expected)


def test_decode_to_png_and_zarr(saved, tmp_path):
    from skimage import io as skio

    path, model = saved
    assert cli.main(["decode", str(path), str(tmp_path / "full.png")]) == 0
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "full.png")), model.decode(0))
    argv = ["decode", str(path), str(tmp_path / "part.zarr"), "--region", "-16:,:24"]
    assert cli.main(argv) == 0
    values = zarr.open_array(str(tmp_path / "part.zarr"), mode="r")[:]
    np.testing.assert_array_equal(values, model.decode(0, region=(slice(32, 48), slice(0, 24))))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("0:10", "2 spatial axes"),
        ("0:10,5", "start:stop"),
        ("0:10,a:b", "not an integer"),
        ("0:10,0:100", "outside the level"),
        ("10:5,0:4", "empty"),
    ],
)
def test_decode_bad_region(saved, tmp_path, capsys, region, expected):
    path, _ = saved
    argv = ["decode", str(path), str(tmp_path / "r.npy"), "--region", region]
    assert cli.main(argv) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "r.npy").exists()


def test_decode_bad_level_and_format(saved, tmp_path, capsys):
    path, _ = saved
    assert cli.main(["decode", str(path), str(tmp_path / "r.npy"), "--level", "3"]) == 2
    assert "levels 0 to 2" in _error_line(capsys)
    assert cli.main(["decode", str(path), str(tmp_path / "r.bin")]) == 2
    assert ".npy" in _error_line(capsys)


def test_decode_refuses_what_the_format_cannot_hold_and_existing_outputs(tmp_path, capsys):
    values = smooth((24, 16), frequency=3.0).astype(np.float32)
    path = tmp_path / "float.miner.zarr"
    nm.fit(values, nm.MinerConfig(n_levels=1, block_size=8, max_steps=5), device="cpu").save(path)
    assert cli.main(["decode", str(path), str(tmp_path / "f.png")]) == 2
    assert "8- or 16-bit unsigned integers" in _error_line(capsys)
    assert cli.main(["decode", str(path), str(tmp_path / "f.tif")]) == 0
    assert cli.main(["decode", str(path), str(tmp_path / "f.tif")]) == 1
    assert "--overwrite" in _error_line(capsys)
    assert cli.main(["decode", str(path), str(tmp_path / "f.tif"), "--overwrite"]) == 0
    assert cli.main(["decode", str(path), str(path), "--overwrite"]) == 2
    assert "also the input" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.tif", "float.miner.zarr"]


def test_parse_region():
    assert cli.parse_region("0:4, 2:", (10, 8)) == (slice(0, 4), slice(2, 8))
    assert cli.parse_region(":,-3:-1,1:2", (5, 6, 7)) == (slice(0, 5), slice(3, 5), slice(1, 2))


# ------------------------------------------------------------------------------------ export
def test_export(saved, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, model = saved
    output = tmp_path / "gray.ome.zarr"
    assert cli.main(["export", str(path), str(output), "--chunk", "16"]) == 0
    node = list(Reader(parse_url(str(output)))())[0]
    assert [level.shape for level in node.data] == [model.decoded_shape(j) for j in range(3)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), model.decode(1))

    assert cli.main(["export", str(path), str(output)]) == 1
    assert "--overwrite" in _error_line(capsys)
    assert cli.main(["export", str(path), str(output), "--overwrite", "--levels", "1"]) == 0
    assert len(list(Reader(parse_url(str(output)))())[0].data) == 1

    assert cli.main(["export", str(path), str(path), "--overwrite"]) == 2
    assert "also the input" in _error_line(capsys)
    assert nm.load(path).n_parameters == model.n_parameters  # the model is untouched


# -------------------------------------------------------------------------------------- misc
def test_demo_delegates_to_python_m_napari_miner(monkeypatch):
    import napari_miner.__main__ as demo

    seen = []
    monkeypatch.setattr(demo, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["demo", "--image", "camera", "--max-steps", "5"]) == 0
    assert seen == [["--image", "camera", "--max-steps", "5"]]


def test_help_and_usage(capsys):
    assert cli.main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "COMMAND" in _error_line(capsys)


def test_runs_as_a_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "napari_miner.cli", "info", str(tmp_path / "missing.miner.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("napari-miner: error: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
