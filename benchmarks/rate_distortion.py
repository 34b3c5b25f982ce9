"""Rate–distortion benchmark: napari-miner models against JPEG, JPEG 2000, JPEG XL, AVIF and PNG.

For each image (scikit-image's ``astronaut``, ``camera``, the top-left 1280×1280 crop of
``retina``, ``rocket`` and ``immunohistochemistry``), fit one model per target PSNR, save it and
measure its rate as bits per pixel (every byte of the ``*.miner.zarr`` store × 8 / (H × W)) and its
distortion as the PSNR of ``model.decode()`` against the uint8 input (peak 255, all channels). The
saved model is loaded back and its PSNR checked against the one the fit reported. Each codec
(via imagecodecs) is swept over its quality parameter; the codecs' bits per pixel at the model's
PSNR are interpolated (log-bpp linear between the two bracketing points, "—" outside the sweep).
Lossless PNG (best compression) is the reference a lossy model should beat.

With ``--volumes``, an occupancy volume (a union of spheres and a torus) is fitted to a sweep of
target IoUs and the store is compared with the bit-packed voxels (also zstd-compressed) and with
the zstd-compressed binary PLY of the model's surface.

Needs the ``bench`` extra (``pip install napari-miner[bench]``: imagecodecs, matplotlib).

Usage::

    python benchmarks/rate_distortion.py [--images astronaut camera ...] [--targets 30 34 37 40 43]
        [--codecs jpeg j2k jxl avif] [--device cpu|cuda|auto] [--threads N] [--set key=value ...]
        [--volumes] [--volume-size 128] [--volume-ious 0.99 0.999]
        [--json out.json] [--plot out.png] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numcodecs
import numpy as np
import torch
from _common import IMAGES, config_overrides, folder_size, load_image, store_breakdown

import napari_miner as nm
from napari_miner.core.metrics import iou, psnr

TARGETS = (30.0, 34.0, 37.0, 40.0, 43.0)
QUICK_TARGETS = (30.0, 34.0)
QUICK_IMAGES = ("camera", "astronaut")
QUICK_MAX_STEPS = 60
VOLUME_IOUS = (0.99, 0.999)
RELOAD_TOLERANCE_DB = 0.05
PEAK = 255.0


# ------------------------------------------------------------------------------------ codecs
@dataclass(frozen=True)
class Codec:
    """An image codec swept over its quality parameter.

    Attributes
    ----------
    key : str
        Short name used on the command line (``--codecs``).
    label : str
        Name in tables and plots.
    parameter : str
        What the sweep varies, for the JSON output.
    sweep, quick_sweep : tuple
        The parameter values of a full and of a ``--quick`` run.
    encode : callable
        ``encode(image, value) -> bytes`` for a uint8 ``(Y, X)`` or ``(Y, X, 3)`` image and one
        value of the sweep.
    decode : callable
        ``decode(bytes) -> numpy.ndarray``.
    """

    key: str
    label: str
    parameter: str
    sweep: tuple[Any, ...]
    quick_sweep: tuple[Any, ...]
    encode: Callable[[np.ndarray, Any], bytes]
    decode: Callable[[bytes], np.ndarray]


def _jpeg_encode(image: np.ndarray, setting: tuple[int, str]) -> bytes:
    """JPEG (libjpeg-turbo) at a ``(quality, chroma subsampling)`` setting."""
    quality, subsampling = setting
    return imagecodecs.jpeg8_encode(image, level=quality, subsampling=subsampling)


JPEG_SWEEP = tuple((q, "420") for q in (5, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)) + tuple(
    (q, "444") for q in (50, 70, 80, 85, 90, 93, 95, 97, 99, 100)
)
"""JPEG settings: libjpeg's default 4:2:0 chroma subsampling is the better choice at low rates
but caps the PSNR of colourful images (rocket: 35 dB at quality 100); 4:4:4 reaches high PSNRs."""

AVIF_SPEED = 6
"""libavif encoder speed (avifenc's default); imagecodecs' default is about 100× slower (20 s for
the 1280×1280 retina crop) for about 6 % fewer bytes."""


def _avif_encode(image: np.ndarray, quality: float) -> bytes:
    """AVIF at ``quality`` (0–99) and :data:`AVIF_SPEED`; gray images are encoded as neutral RGB.

    imagecodecs' ``avif_encode`` writes every single-channel image losslessly, whatever the
    quality, so a gray image is replicated to three equal channels (the chroma planes of neutral
    gray cost next to nothing) and the first channel is read back.
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return imagecodecs.avif_encode(image, level=int(quality), speed=AVIF_SPEED)


CODECS: dict[str, Codec] = {
    codec.key: codec
    for codec in (
        Codec(
            "jpeg",
            "JPEG",
            "(quality, chroma subsampling)",
            JPEG_SWEEP,
            ((10, "420"), (50, "420"), (90, "444"), (100, "444")),
            _jpeg_encode,
            imagecodecs.jpeg8_decode,
        ),
        Codec(
            "j2k",
            "JPEG 2000",
            "target PSNR (dB, OpenJPEG's fixed-quality layer)",
            tuple(range(22, 62, 2)),
            (26, 34, 42, 50),
            lambda image, q: imagecodecs.jpeg2k_encode(image, level=float(q)),
            imagecodecs.jpeg2k_decode,
        ),
        Codec(
            "jxl",
            "JPEG XL",
            "distance",
            (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 12.0, 18.0),
            (0.1, 0.5, 2.0, 6.0),
            lambda image, d: imagecodecs.jpegxl_encode(image, distance=float(d)),
            imagecodecs.jpegxl_decode,
        ),
        Codec(
            "avif",
            "AVIF",
            "quality (speed 6)",
            (0, 5, 15, 25, 35, 45, 55, 65, 75, 82, 88, 92, 95, 97, 99),
            (20, 50, 80, 95),
            _avif_encode,
            imagecodecs.avif_decode,
        ),
    )
}
PNG_LEVEL = 9
"""zlib level of the lossless PNG (the best compression)."""


def like_input(decoded: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A decoded image in the input's layout (a gray image sent as RGB comes back as its first channel)."""
    if image.ndim == 2 and decoded.ndim == 3:
        decoded = decoded[..., 0]
    if decoded.shape != image.shape:
        raise RuntimeError(f"codec returned shape {decoded.shape} for an image of {image.shape}")
    return decoded


def codec_point(codec: Codec, image: np.ndarray, value: Any) -> dict[str, Any]:
    """Encode ``image`` at one parameter value; return the bits per pixel and the PSNR."""
    start = time.perf_counter()
    encoded = codec.encode(image, value)
    encode_s = time.perf_counter() - start
    decoded = like_input(np.asarray(codec.decode(encoded)), image)
    pixels = image.shape[0] * image.shape[1]
    return {
        "value": value,
        "bytes": len(encoded),
        "bpp": len(encoded) * 8 / pixels,
        "psnr_db": psnr(image, decoded, PEAK),
        "encode_s": encode_s,
    }


def codec_curve(codec: Codec, image: np.ndarray, quick: bool) -> list[dict[str, Any]]:
    """The codec's rate–distortion curve: the Pareto front of its sweep's points.

    Points are ordered by rate; a point is kept only if it has a higher PSNR than every cheaper
    one (so the curve rises monotonically), and lossless points (PSNR ``inf``) are dropped.
    """
    points = [codec_point(codec, image, v) for v in (codec.quick_sweep if quick else codec.sweep)]
    front: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda p: (p["bpp"], -p["psnr_db"])):
        if math.isfinite(point["psnr_db"]) and (
            not front or point["psnr_db"] > front[-1]["psnr_db"]
        ):
            front.append(point)
    return front


def png_bpp(image: np.ndarray) -> float:
    """Bits per pixel of the lossless PNG at the best compression level (checked lossless)."""
    encoded = imagecodecs.png_encode(image, level=PNG_LEVEL)
    if not np.array_equal(like_input(imagecodecs.png_decode(encoded), image), image):
        raise RuntimeError("PNG round trip is not lossless")
    return len(encoded) * 8 / (image.shape[0] * image.shape[1])


def bpp_at(points: Sequence[dict[str, float]], target_db: float) -> float | None:
    """A codec's bits per pixel at ``target_db``, or ``None`` outside its range.

    Log-bpp is interpolated linearly in PSNR between the two consecutive points of the curve
    (ordered by rate, PSNR rising; see :func:`codec_curve`) that bracket the target.
    """
    for a, b in zip(points, points[1:], strict=False):
        if not a["psnr_db"] <= target_db <= b["psnr_db"]:
            continue
        t = (target_db - a["psnr_db"]) / (b["psnr_db"] - a["psnr_db"])
        return math.exp(math.log(a["bpp"]) + t * (math.log(b["bpp"]) - math.log(a["bpp"])))
    return None


# ------------------------------------------------------------------------------------ models
@dataclass
class ModelPoint:
    """One fitted and saved model of an image.

    Attributes
    ----------
    target_db : float
        ``MinerConfig.target_psnr``.
    psnr_db : float
        PSNR (peak 255) of ``model.decode()`` against the input.
    reported_db : float
        ``Finished.psnr``, the PSNR the fit reported, converted from the input's value range to
        peak 255 (the same number for images that span 0–255).
    reloaded_db : float or None
        PSNR (peak 255) of the saved model loaded back (``None`` if loading or decoding failed).
    bytes, bpp : float
        Size of the store and its bits per input pixel.
    breakdown : dict
        Store bytes by kind (JSON metadata, chunks of each array).
    parameters : int
        ``model.n_parameters``.
    fit_s : float
        Training time (``Finished.elapsed_s``).
    reason : str
        ``Finished.reason``.
    codec_bpp : dict
        Each codec's interpolated bits per pixel at ``psnr_db`` (``None`` outside its range).
    below_png : bool
        Whether ``bpp`` is below the lossless PNG's.
    """

    target_db: float
    psnr_db: float
    reported_db: float
    reloaded_db: float | None
    bytes: int
    bpp: float
    breakdown: dict[str, int]
    parameters: int
    fit_s: float
    reason: str
    codec_bpp: dict[str, float | None] = field(default_factory=dict)
    below_png: bool = False


def finish(run: nm.FitRun) -> nm.Finished:
    """Consume a fit's events and return the last one."""
    final = None
    for event in run:
        if isinstance(event, nm.Finished):
            final = event
    if final is None:
        raise RuntimeError("the fit ended without a Finished event")
    return final


def fit_point(image: np.ndarray, config: nm.MinerConfig, device: str, workdir: Path) -> ModelPoint:
    """Fit, save, reload and measure one model of ``image``."""
    final = finish(nm.fit_iter(image, config, device=device))
    model = nm.MinerModel.of(final.model)
    path = workdir / f"{config.target_psnr:g}.miner.zarr"
    model.save(path)
    value_range = float(image.max()) - float(image.min()) or 1.0
    size = folder_size(path)
    return ModelPoint(
        target_db=config.target_psnr,
        psnr_db=psnr(image, model.decode(0, device=device), PEAK),
        reported_db=final.psnr + 20 * math.log10(PEAK / value_range),
        reloaded_db=reloaded(path, device, lambda d: psnr(image, d, PEAK)),
        bytes=size,
        bpp=size * 8 / (image.shape[0] * image.shape[1]),
        breakdown=store_breakdown(path),
        parameters=model.n_parameters,
        fit_s=final.elapsed_s,
        reason=final.reason,
    )


def reloaded(path: Path, device: str, measure: Callable[[np.ndarray], float]) -> float | None:
    """``measure`` of the full-resolution decode of the model saved at ``path``, loaded back.

    A failure is printed as a warning and gives ``None``: a benchmark run keeps its other numbers.
    """
    try:
        return measure(nm.load(path).decode(0, device=device))
    except Exception as error:  # any failure of load or decode is reported, not fatal
        print(f"WARNING: loading {path.name} back failed: {type(error).__name__}: {error}")
        return None


def image_config(target_db: float, overrides: dict[str, Any], quick: bool) -> nm.MinerConfig:
    """The fit's settings: ``target_psnr`` from the sweep, the rest from ``--set``."""
    settings = dict(overrides)
    if "target_psnr" in settings:
        raise SystemExit("set the target PSNRs with --targets, not --set target_psnr=...")
    if quick:
        settings.setdefault("max_steps", QUICK_MAX_STEPS)
    try:
        return nm.MinerConfig(target_psnr=target_db, **settings)
    except TypeError as error:  # a --set key that MinerConfig does not have
        raise SystemExit(f"--set: {error}") from None


# ------------------------------------------------------------------------------------ images
def run_image(
    name: str,
    targets: Sequence[float],
    codecs: Sequence[Codec],
    overrides: dict[str, Any],
    device: str,
    quick: bool,
) -> dict[str, Any]:
    """Codec curves and model points of one image."""
    image = load_image(name)
    curves = {codec.key: codec_curve(codec, image, quick) for codec in codecs}
    result: dict[str, Any] = {
        "image": name,
        "shape": list(image.shape),
        "png_bpp": png_bpp(image),
        "codecs": curves,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for target in targets:
            point = fit_point(image, image_config(target, overrides, quick), device, Path(folder))
            point.codec_bpp = {key: bpp_at(curve, point.psnr_db) for key, curve in curves.items()}
            point.below_png = point.bpp < result["png_bpp"]
            warn_if_inconsistent(name, point)
            result["models"].append(asdict(point))
            print(
                f"  {name} @ {target:g} dB: {point.psnr_db:.2f} dB, {point.bpp:.3f} bpp, "
                f"{point.parameters:,} parameters, {point.fit_s:.1f} s ({point.reason})",
                flush=True,
            )
    return result


def warn_if_inconsistent(name: str, point: ModelPoint) -> None:
    """Print a warning when the reloaded model's PSNR is not the reported or the in-memory one."""
    if point.reloaded_db is None:
        return
    for other, what in ((point.reported_db, "the fit reported"), (point.psnr_db, "in memory")):
        if not abs(point.reloaded_db - other) <= RELOAD_TOLERANCE_DB:
            print(
                f"WARNING: {name} @ {point.target_db:g} dB: the saved model decodes to "
                f"{point.reloaded_db:.3f} dB, {what} {other:.3f} dB",
                flush=True,
            )


# ------------------------------------------------------------------------------------ volumes
def run_volume(
    size: int, target_iou: float, overrides: dict[str, Any], device: str, quick: bool
) -> dict[str, Any]:
    """Fit the occupancy volume to ``target_iou``; compare its store with lossless encodings."""
    from fit_volumes import occupancy_shape

    from napari_miner.io.mesh import export_mesh

    volume = occupancy_shape(size)
    settings = dict(overrides, target_iou=target_iou)
    if quick:
        settings.setdefault("max_steps", 4 * QUICK_MAX_STEPS)
    config = nm.MinerConfig.for_volume(**settings)
    final = finish(nm.fit_iter(volume, config, device=device))
    model = nm.MinerModel.of(final.model)
    zstd = numcodecs.Zstd(level=19)
    packed = np.packbits(volume)
    with tempfile.TemporaryDirectory() as folder:
        store, ply = Path(folder) / "volume.miner.zarr", Path(folder) / "surface.ply"
        model.save(store)
        reloaded_iou = reloaded(store, device, lambda d: iou(volume, d))
        export_mesh(model, ply)
        ply_bytes = ply.read_bytes()
        return {
            "size": size,
            "occupied": float(volume.mean()),
            "target_iou": target_iou,
            "iou": iou(volume, model.decode(0, device=device)),
            "reloaded_iou": reloaded_iou,
            "parameters": model.n_parameters,
            "fit_s": final.elapsed_s,
            "reason": final.reason,
            "store_bytes": folder_size(store),
            "breakdown": store_breakdown(store),
            "packbits_bytes": packed.nbytes,
            "packbits_zstd_bytes": len(zstd.encode(packed)),
            "ply_bytes": len(ply_bytes),
            "ply_zstd_bytes": len(zstd.encode(np.frombuffer(ply_bytes, np.uint8))),
        }


# ------------------------------------------------------------------------------------ output
def fmt_bpp(value: float | None) -> str:
    """Bits per pixel with three decimals, or "—"."""
    return "—" if value is None else f"{value:.3f}"


def image_table(results: Sequence[dict[str, Any]], codecs: Sequence[Codec]) -> str:
    """The markdown table of every model point with the codecs' bits at equal PSNR."""
    codec_heads = " | ".join(f"{c.label} bpp" for c in codecs)
    lines = [
        f"| image | target | PSNR | bpp | parameters | fit | {codec_heads} | model / J2K | PNG bpp |",
        "|---|---|---|---|---|---|" + "---|" * len(codecs) + "---|---|",
    ]
    for result in results:
        shape = "×".join(map(str, result["shape"]))
        for m in result["models"]:
            j2k = m["codec_bpp"].get("j2k")
            ratio = "—" if j2k is None else f"{m['bpp'] / j2k:.1f}×"
            below = " (model below)" if m["below_png"] else ""
            codec_cells = " | ".join(fmt_bpp(m["codec_bpp"][c.key]) for c in codecs)
            lines.append(
                f"| {result['image']} {shape} | {m['target_db']:g} dB | {m['psnr_db']:.2f} dB "
                f"| {m['bpp']:.3f} | {m['parameters']:,} | {m['fit_s']:.1f} s ({m['reason']}) "
                f"| {codec_cells} | {ratio} | {result['png_bpp']:.3f}{below} |"
            )
    return "\n".join(lines)


def breakdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the stores' bytes: JSON metadata against each array's chunks."""
    kinds = sorted(
        {k for r in results for m in r["models"] for k in m["breakdown"]},
        key=lambda k: (k != "metadata", k),
    )
    lines = [
        "| image | target | store | " + " | ".join(kinds) + " | params bytes / parameter |",
        "|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for result in results:
        for m in result["models"]:
            cells = " | ".join(
                f"{m['breakdown'].get(k, 0) / 1e3:,.1f} kB ({m['breakdown'].get(k, 0) / m['bytes']:.0%})"
                for k in kinds
            )
            per_parameter = m["breakdown"].get("params", 0) / max(m["parameters"], 1)
            lines.append(
                f"| {result['image']} | {m['target_db']:g} dB | {m['bytes'] / 1e3:,.1f} kB "
                f"| {cells} | {per_parameter:.2f} |"
            )
    return "\n".join(lines)


def volume_table(volumes: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the occupancy volumes: store against lossless encodings."""
    lines = [
        "| volume | target IoU | IoU | parameters | fit | store | bit-packed | bit-packed + zstd "
        "| PLY | PLY + zstd | store metadata |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in volumes:
        kb = {k: v[k] / 1e3 for k in v if k.endswith("_bytes")}
        lines.append(
            f"| {v['size']}³ ({v['occupied']:.1%} occupied) | {v['target_iou']:g} | {v['iou']:.4f} "
            f"| {v['parameters']:,} | {v['fit_s']:.1f} s ({v['reason']}) | {kb['store_bytes']:,.1f} kB "
            f"| {kb['packbits_bytes']:,.1f} kB | {kb['packbits_zstd_bytes']:,.1f} kB "
            f"| {kb['ply_bytes']:,.1f} kB | {kb['ply_zstd_bytes']:,.1f} kB "
            f"| {v['breakdown'].get('metadata', 0) / 1e3:,.1f} kB |"
        )
    return "\n".join(lines)


def codec_summary(result: dict[str, Any], codecs: Sequence[Codec]) -> str:
    """One line per image: each codec's swept range of PSNR and rate."""
    parts = []
    for codec in codecs:
        curve = result["codecs"][codec.key]
        if curve:
            db = [p["psnr_db"] for p in curve]
            parts.append(
                f"{codec.label} {min(db):.1f}–{max(db):.1f} dB at "
                f"{curve[0]['bpp']:.3f}–{curve[-1]['bpp']:.3f} bpp"
            )
    return f"{result['image']}: PNG {result['png_bpp']:.3f} bpp; " + "; ".join(parts)


def plot(results: Sequence[dict[str, Any]], codecs: Sequence[Codec], path: str, title: str) -> None:
    """One panel per image: PSNR against bits per pixel (log) for the models and the codecs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    columns = min(3, len(results))
    rows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(5.4 * columns, 4.2 * rows + 0.8),
        squeeze=False,
        layout="constrained",
    )
    colours = dict(zip(CODECS, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=True))
    for ax, result in zip(axes.flat, results, strict=False):
        for codec in codecs:
            curve = result["codecs"][codec.key]
            ax.plot(
                [p["bpp"] for p in curve], [p["psnr_db"] for p in curve], ".-",
                color=colours[codec.key], label=codec.label, linewidth=1.2, markersize=4,
            )  # fmt: skip
        ax.axvline(result["png_bpp"], color="grey", linestyle="--", label="PNG (lossless)")
        models = result["models"]
        ax.plot(
            [m["bpp"] for m in models], [m["psnr_db"] for m in models], "o-", color="black",
            linewidth=2, markersize=6, label="napari-miner (target dB)", zorder=5,
        )  # fmt: skip
        for m in models:
            ax.annotate(
                f"{m['target_db']:g}", (m["bpp"], m["psnr_db"]), xytext=(7, -3),
                textcoords="offset points", fontsize=8,
            )  # fmt: skip
        shape = "×".join(map(str, result["shape"][:2]))
        kind = "RGB" if len(result["shape"]) == 3 else "gray"
        ax.set_title(f"{result['image']} ({shape} {kind})")
        ax.set_xscale("log")
        ax.set_ylim(*_psnr_limits(result))
        ax.set_xlim(*_bpp_limits(result, ax.get_ylim()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB, peak 255)")
        ax.grid(True, which="major", alpha=0.5)
        ax.grid(True, which="minor", alpha=0.15)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _psnr_limits(result: dict[str, Any]) -> tuple[float, float]:
    """A PSNR range that shows the models and the codecs around them."""
    model_db = [m["psnr_db"] for m in result["models"]]
    low = min(model_db, default=30.0) - 5.0
    high = max(max(model_db, default=40.0) + 6.0, 46.0)
    return max(low, 15.0), min(high, 65.0)


def _bpp_limits(result: dict[str, Any], psnr_limits: tuple[float, float]) -> tuple[float, float]:
    """A rate range around the points shown in ``psnr_limits``, with room for the labels."""
    points = [p for curve in result["codecs"].values() for p in curve] + result["models"]
    low, high = psnr_limits
    shown = [p["bpp"] for p in points if low <= p["psnr_db"] <= high] + [result["png_bpp"]]
    return min(shown) / 1.4, max(shown) * 2.0


def machine_info(device: str) -> dict[str, Any]:
    """Versions and hardware, for the record."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "imagecodecs": imagecodecs.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    }


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", choices=IMAGES, help=f"default: {IMAGES}")
    parser.add_argument("--targets", nargs="+", type=float, help=f"target PSNRs, default {TARGETS}")
    parser.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="MinerConfig")
    parser.add_argument("--volumes", action="store_true", help="also the occupancy volume")
    parser.add_argument("--volume-size", type=int, help="side of the volume (default 128)")
    parser.add_argument("--volume-ious", nargs="+", type=float, default=list(VOLUME_IOUS))
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="write the rate–distortion plot to this PNG")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_IMAGES}, targets {QUICK_TARGETS}, few codec points, "
        f"max_steps={QUICK_MAX_STEPS}, a 48³ volume",
    )
    args = parser.parse_args(argv)
    args.images = args.images or list(QUICK_IMAGES if args.quick else IMAGES)
    args.targets = args.targets or list(QUICK_TARGETS if args.quick else TARGETS)
    args.volume_size = args.volume_size or (48 if args.quick else 128)
    if args.quick and args.volume_ious == list(VOLUME_IOUS):
        args.volume_ious = [VOLUME_IOUS[0]]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print markdown tables."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = config_overrides(args.set)
    codecs = [CODECS[key] for key in args.codecs]
    device = str(nm.resolve_device(args.device))
    machine = machine_info(device)
    base = image_config(args.targets[0], overrides, args.quick)
    print(f"machine: {machine}\nconfig: {base} (target_psnr swept over {args.targets})\n")
    results = [
        run_image(name, args.targets, codecs, overrides, device, args.quick) for name in args.images
    ]
    print()
    for result in results:
        print(codec_summary(result, codecs))
    print(f"\n{image_table(results, codecs)}\n\nStore bytes by kind:\n\n{breakdown_table(results)}")
    volumes = []
    if args.volumes:
        volumes = [
            run_volume(args.volume_size, t, overrides, device, args.quick) for t in args.volume_ious
        ]
        print(f"\nOccupancy volume:\n\n{volume_table(volumes)}")
    if args.plot:
        settings = ", ".join(args.set) or "default settings"
        title = f"napari-miner vs image codecs ({settings}; fitted on {machine['device']})"
        plot(results, codecs, args.plot, title)
        print(f"\nplot: {args.plot}")
    if args.json:
        record = {
            "machine": machine,
            "overrides": overrides,
            "config": base.to_dict(),
            "codecs": {c.key: {"label": c.label, "parameter": c.parameter} for c in codecs},
            "images": results,
            "volumes": volumes,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
