"""Figures of the class activation maps (CAMs) that CAT-KD transfers.

The CAM of class c is the classifier kernel's column c applied at every position of the map the
classifier global-average-pools: `features [N, h, w, K] @ kernel[:, c] -> [N, h, w]`.

* `save_cam_figure(path, images, labels, class_names, networks, ...)` draws, for each image and
  network, the CAMs of the true and the top predicted classes over the image, and the pooled
  `resolution x resolution` map of the true class that the CAT loss compares.
* `visualize(config, checkpoint, output_dir)` is `main.py --mode visualize`: the first test
  images, the student at `checkpoint` (and the teacher, for distillation methods), into
  `output_dir/cams.png`.
* `cam_peak_in_box(...)` tells whether each true-class CAM peaks inside the object's box.

matplotlib is imported on first use and only through its object API with the Agg canvas, so
no pyplot state or backend choice of the caller's is touched.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from catkd_jax import losses, methods, outputs, training
from catkd_jax.data import DataSource, create_source
from catkd_jax.errors import ConfigError, MissingInputError

DPI = 100

# Layout of save_cam_figure, in inches. Totals are rounded up to whole quarter inches, which are
# exact in binary floating point, so the PNG is exactly figsize * DPI pixels.
_PANEL = 1.5  # side of every square panel
_PANEL_GAP = 0.15  # between panels of one group
_GROUP_GAP = 0.3  # between the image and the first group
_CBAR_PAD = 0.08  # between a group's last panel and its colour bar
_CBAR_WIDTH = 0.12
_CBAR_LABELS = 0.5  # right of a colour bar: its tick labels, then the next group
_TITLE_SPACE = 0.56  # above each row: three lines of panel title
_ROW_GAP = 0.12
_MARGIN = 0.2  # left and bottom
_HEADER_LINE = 0.2  # per line of the figure title
_HEADER_SIZE = 9.5  # points
_HEADER_CHAR = 5.8  # points per character of the figure title, a little above DejaVu's mean
_FONT = 8.5  # panel titles, tick labels, annotations
# Names are cut to fit a panel's width: class names share their title line with quotes.
_CLASS_CHARS = 16
_NETWORK_CHARS = 22
_MAX_ANNOTATED = 4  # pooled maps up to 4 x 4 have their values written in

_CAM_CMAP = "jet"
_POOLED_CMAP = "RdBu_r"  # diverging around 0: pooled CAMs of either sign
_CAM_ALPHA = 0.5
_BOX_COLOUR = "lime"


@dataclasses.dataclass(frozen=True)
class _Column:
    kind: str  # 'image', 'cam', 'cam_bar', 'pooled' or 'pooled_bar'
    left: float  # inches from the figure's left edge
    width: float
    network: int = -1  # index into the networks, for 'cam', 'cam_bar', 'pooled'
    rank: int = 0  # for 'cam': 0 is the true class, k >= 1 the k-th predicted class


def _columns(num_networks: int, num_top: int) -> tuple[list[_Column], float]:
    """The figure's columns, left to right, and the width (inches) they need with margins.

    Columns: the image; per network its true-class CAM, its `num_top` top-class CAMs and a
    colour bar (one CAM scale per network and row); then every network's pooled true-class
    map side by side, sharing one colour bar (the maps the CAT loss compares, on one scale).
    """
    columns, x = [_Column("image", _MARGIN, _PANEL)], _MARGIN + _PANEL + _GROUP_GAP
    for network in range(num_networks):
        for rank in range(1 + num_top):
            columns.append(_Column("cam", x, _PANEL, network, rank))
            x += _PANEL + _PANEL_GAP
        x += _CBAR_PAD - _PANEL_GAP
        columns.append(_Column("cam_bar", x, _CBAR_WIDTH, network))
        x += _CBAR_WIDTH + _CBAR_LABELS
    for network in range(num_networks):
        columns.append(_Column("pooled", x, _PANEL, network))
        x += _PANEL + _PANEL_GAP
    x += _CBAR_PAD - _PANEL_GAP
    columns.append(_Column("pooled_bar", x, _CBAR_WIDTH))
    return columns, x + _CBAR_WIDTH + _CBAR_LABELS


def _quarter_inches(inches: float) -> float:
    return float(np.ceil(inches * 4.0 - 1e-9) / 4.0)


def _header_lines(
    width: float, num_top: int, resolution: int, normalize: bool, boxes: bool
) -> list[str]:
    """The figure title: what every column shows, wrapped to fit `width` inches."""
    top = f", then of its top-{num_top} predicted class{'es' if num_top > 1 else ''}" if num_top else ""
    pooled = f"{resolution}\u00d7{resolution}" + (", l2-normalised over positions" if normalize else "")
    text = (
        "Class activation maps: the CAM of class c is features \u00b7 classifier kernel[:, c] at every "
        "position, upsampled bilinearly over the grey image"
        + (f" ({_BOX_COLOUR} box: the object)" if boxes else "")
        + ". Per network: the CAM of the true class"
        + top
        + " (p: softmax probability; one colour scale per network and row). Last columns: the "
        f"true-class CAM average-pooled to {pooled}, which CAT-KD matches between teacher and "
        "student (one colour scale per row)."
    )
    return textwrap.wrap(text, int((width - 2 * _MARGIN) * 72 / _HEADER_CHAR))


@dataclasses.dataclass(frozen=True)
class _Layout:
    columns: list[_Column]
    header: list[str]  # lines of the figure title
    header_height: float  # inches above the first row
    width: float  # of the figure, inches
    height: float


def _layout(
    num_images: int, num_networks: int, num_top: int, resolution: int, normalize: bool, boxes: bool
) -> _Layout:
    columns, width = _columns(num_networks, num_top)
    width = _quarter_inches(width)
    header = _header_lines(width, num_top, resolution, normalize, boxes)
    header_height = len(header) * _HEADER_LINE + 0.15
    height = header_height + num_images * (_TITLE_SPACE + _PANEL + _ROW_GAP) + _MARGIN
    return _Layout(columns, header, header_height, width, _quarter_inches(height))


def cam_figure_size(
    num_images: int, num_networks: int, num_top: int = 2, *, resolution: int = 2,
    normalize: bool = False, boxes: bool = False
) -> tuple[float, float]:
    """`(width, height)` in inches of `save_cam_figure`'s figure; the PNG is that times `DPI`."""
    layout = _layout(num_images, num_networks, num_top, resolution, normalize, boxes)
    return layout.width, layout.height


def _short(name: str, limit: int = _CLASS_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _check_inputs(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
    networks: Mapping[str, tuple[jax.Array, jax.Array, jax.Array]], boxes: np.ndarray | None,
    num_top: int
) -> None:
    n = images.shape[0]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [n, H, W, 3], got shape {images.shape}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [n] = [{n}], got shape {labels.shape}")
    if not networks:
        raise ValueError("networks is empty; give at least one name -> (logits, features, kernel)")
    num_classes = len(class_names)
    for name, (logits, features, kernel) in networks.items():
        logits_shape, features_shape, kernel_shape = np.shape(logits), np.shape(features), np.shape(kernel)
        if (
            logits_shape != (n, num_classes)
            or len(features_shape) != 4
            or features_shape[0] != n
            or kernel_shape != (features_shape[-1], num_classes)
        ):
            raise ValueError(
                f"network {name!r}: expected logits [n, C], features [n, h, w, K] and kernel [K, C] "
                f"with n={n} images and C={num_classes} class names; got {logits_shape}, "
                f"{features_shape} and {kernel_shape}"
            )
    if boxes is not None and np.shape(boxes) != (n, 4):
        raise ValueError(f"boxes must be [n, 4] = [{n}, 4] (y0, x0, y1, x1), got {np.shape(boxes)}")
    if not 0 <= num_top <= num_classes:
        raise ValueError(f"num_top must be in 0..{num_classes} (the class count), got {num_top}")
    if np.any((labels < 0) | (labels >= num_classes)):
        raise ValueError(f"labels must be class indices in 0..{num_classes - 1}")


def _network_maps(
    logits: jax.Array, features: jax.Array, kernel: jax.Array, labels: np.ndarray,
    num_top: int, image_size: tuple[int, int], resolution: int, normalize: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One network's drawn maps.

    Returns:
      classes: int `[n, 1 + num_top]`, the true class then the top predicted ones.
      probs: `[n, 1 + num_top]`, their softmax probabilities.
      cams: `[n, H, W, 1 + num_top]`, their CAMs upsampled bilinearly to the image size.
      pooled: `[n, r, r]`, the true-class CAM as the CAT loss sees it.
    """
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :num_top]
    classes = np.concatenate([labels[:, None], top], axis=1)
    # Only the drawn classes' CAMs: all C of them at image size could take gigabytes.
    columns = jnp.asarray(kernel, jnp.float32).T[classes]  # [n, 1 + num_top, K]
    cams = jnp.einsum("nhwk,nck->nhwc", jnp.asarray(features, jnp.float32), columns)
    upsampled = jax.image.resize(cams, (cams.shape[0], *image_size, cams.shape[-1]), "bilinear")
    pooled = losses.adaptive_avg_pool(cams[..., :1], resolution)
    if normalize:
        pooled = losses.l2_normalize_space(pooled)
    return (
        classes,
        np.take_along_axis(probs, classes, axis=1),
        np.asarray(upsampled),
        np.asarray(pooled[..., 0]),
    )


def _draw_box(axes: Any, box: np.ndarray) -> None:
    from matplotlib.patches import Rectangle  # pylint: disable=import-outside-toplevel

    y0, x0, y1, x1 = (int(v) for v in box)
    # Pixel p covers [p - 0.5, p + 0.5] in imshow coordinates; the box is end-exclusive.
    axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                             edgecolor=_BOX_COLOUR, linewidth=1.5))


def _colour_bar(figure: Any, axes: Any, norm: Any, cmap: str, label: str) -> None:
    from matplotlib.cm import ScalarMappable  # pylint: disable=import-outside-toplevel

    # A mappable of its own: the overlay's transparency would wash out the bar.
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=axes)
    bar.ax.tick_params(labelsize=_FONT)
    axes.set_title(label, fontsize=_FONT)


def save_cam_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    networks: Mapping[str, tuple[jax.Array, jax.Array, jax.Array]],
    *,
    resolution: int,
    normalize: bool,
    boxes: np.ndarray | None = None,
    num_top: int = 2,
) -> pathlib.Path:
    """Writes a PNG grid of CAMs, one row per image; see `_columns` for the columns.

    Args:
      path: the PNG file to write (parent directories are created).
      images: `[n, H, W, 3]` on any scale; each is shown min-max rescaled, in grey under CAMs.
      labels: int `[n]`, the true classes.
      class_names: `C` names, indexed by class.
      networks: ordered name -> (logits `[n, C]`, features `[n, h, w, K]`, classifier kernel
        `[K, C]`); e.g. {"teacher": ..., "student": ...}. Networks may differ in h, w and K.
      resolution: side r of the pooled CAMs, as in the CAT loss.
      normalize: l2-normalise the pooled CAMs over their r x r positions, as in the CAT loss.
      boxes: optional int `[n, 4]` object boxes `[y0, x0, y1, x1]`, end-exclusive pixels.
      num_top: how many top predicted classes' CAMs to show per network.
    Returns:
      the path written. The image is `cam_figure_size(...)` inches times `DPI`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
    from matplotlib.colors import Normalize  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    boxes = None if boxes is None else np.asarray(boxes)
    _check_inputs(images, labels, class_names, networks, boxes, num_top)
    num_images, height, width = images.shape[:3]
    maps = [
        _network_maps(*outputs, labels, num_top, (height, width), resolution, normalize)
        for outputs in networks.values()
    ]
    network_names = [_short(name, _NETWORK_CHARS) for name in networks]

    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(images.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    shown = (images - low) / span
    grey = shown @ np.array([0.299, 0.587, 0.114], np.float32)  # [n, H, W]: CAM colours stay CAM's

    layout = _layout(num_images, len(network_names), num_top, resolution, normalize, boxes is not None)
    fig_width, fig_height = layout.width, layout.height
    figure = Figure(figsize=(fig_width, fig_height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.text(0.5, 1.0 - 0.08 / fig_height, "\n".join(layout.header), ha="center", va="top",
                fontsize=_HEADER_SIZE, linespacing=1.35)

    def add_axes(column: _Column, row: int) -> Any:
        top = layout.header_height + row * (_TITLE_SPACE + _PANEL + _ROW_GAP) + _TITLE_SPACE
        axes = figure.add_axes((column.left / fig_width, 1.0 - (top + _PANEL) / fig_height,
                                column.width / fig_width, _PANEL / fig_height))
        if column.kind in ("image", "cam", "pooled"):
            axes.set_xticks([])
            axes.set_yticks([])
        return axes

    for row in range(num_images):
        label_name = _short(class_names[labels[row]])
        pooled_limit = max(float(np.max(np.abs(m[3][row]))) for m in maps) or 1.0
        pooled_norm = Normalize(-pooled_limit, pooled_limit)
        cam_norms = []
        for _, _, cams, _ in maps:
            cam_low, cam_high = float(cams[row].min()), float(cams[row].max())
            cam_norms.append(Normalize(cam_low, cam_high if cam_high > cam_low else cam_low + 1.0))
        for column in layout.columns:
            axes = add_axes(column, row)
            if column.kind == "image":
                axes.imshow(shown[row], interpolation="nearest")
                axes.set_title(f"image {row}\ntrue class\n'{label_name}'", fontsize=_FONT)
                if boxes is not None:
                    _draw_box(axes, boxes[row])
            elif column.kind == "cam":
                classes, probs, cams, _ = maps[column.network]
                axes.imshow(grey[row], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                axes.imshow(cams[row, :, :, column.rank], cmap=_CAM_CMAP, norm=cam_norms[column.network],
                            alpha=_CAM_ALPHA, interpolation="nearest")
                which = "true class" if column.rank == 0 else f"top-{column.rank} class"
                class_name = _short(class_names[classes[row, column.rank]])
                axes.set_title(f"{network_names[column.network]}\n{which}, p={probs[row, column.rank]:.2f}"
                               f"\n'{class_name}'", fontsize=_FONT)
                if boxes is not None:
                    _draw_box(axes, boxes[row])
            elif column.kind == "cam_bar":
                _colour_bar(figure, axes, cam_norms[column.network], _CAM_CMAP, "CAM")
            elif column.kind == "pooled":
                pooled = maps[column.network][3][row]
                axes.imshow(pooled, cmap=_POOLED_CMAP, norm=pooled_norm, interpolation="nearest")
                axes.set_title(f"{network_names[column.network]}\nCAT input, true class\n'{label_name}'",
                               fontsize=_FONT)
                if resolution <= _MAX_ANNOTATED:
                    for (i, j), value in np.ndenumerate(pooled):
                        # Dark cells get white text, pale ones black.
                        colour = "white" if abs(value) > 0.6 * pooled_limit else "black"
                        axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=_FONT,
                                  color=colour)
            else:
                _colour_bar(figure, axes, pooled_norm, _POOLED_CMAP, "pooled")

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # print_png, unlike savefig, ignores the user's savefig.* settings (e.g. bbox='tight').
    figure.canvas.print_png(str(path))
    return path


def cam_peak_in_box(
    features: jax.Array, kernel: jax.Array, labels: jax.Array, boxes: jax.Array,
    image_size: tuple[int, int]
) -> jax.Array:
    """Whether each true-class CAM peaks inside the object's box.

    The peak is the CAM's largest cell (the first in row-major order on ties); cell (i, j) of an
    h x w map over an H x W image stands for its centre pixel position
    ((i + 0.5) * H / h, (j + 0.5) * W / w).

    Args:
      features: `[n, h, w, K]`, the map the classifier pools.
      kernel: `[K, C]`, the classifier kernel.
      labels: int `[n]`, the true classes.
      boxes: int `[n, 4]`, `[y0, x0, y1, x1]` in pixels, end-exclusive.
      image_size: `(H, W)` of the images.
    Returns:
      bool `[n]`: y0 <= centre_y < y1 and x0 <= centre_x < x1 at the peak.
    """
    features = jnp.asarray(features, jnp.float32)
    columns = jnp.asarray(kernel, jnp.float32).T[jnp.asarray(labels)]  # [n, K]
    cams = jnp.einsum("nhwk,nk->nhw", features, columns)
    _, h, w = cams.shape
    peak = jnp.argmax(cams.reshape(cams.shape[0], -1), axis=1)
    centre_y = (peak // w + 0.5) * image_size[0] / h
    centre_x = (peak % w + 0.5) * image_size[1] / w
    boxes = jnp.asarray(boxes)
    return (
        (boxes[:, 0] <= centre_y) & (centre_y < boxes[:, 2])
        & (boxes[:, 1] <= centre_x) & (centre_x < boxes[:, 3])
    )


def first_test_examples(source: DataSource, count: int) -> dict[str, np.ndarray]:
    """The first `count` unmasked test examples (fewer if the test set is smaller)."""
    parts: dict[str, list[np.ndarray]] = {}
    taken = 0
    for batch in source.eval_batches():
        keep = np.asarray(batch["mask"], bool)
        for key in ("image", "label", "box"):
            if key in batch:
                parts.setdefault(key, []).append(np.asarray(batch[key])[keep])
        taken += int(keep.sum())
        if taken >= count:
            break
    return {key: np.concatenate(values)[:count] for key, values in parts.items()}


def network_outputs(
    checkpoint: str | os.PathLike, arch: str, num_classes: int, images: np.ndarray,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """`(arch, (logits, features, kernel))` of the network saved at `checkpoint`, in inference mode.

    `arch` is only used for a `.pth` (see `training.load_network`).
    """
    model, variables, info = training.load_network(checkpoint, arch, num_classes, dtype)
    logits, features = model.apply(variables, jnp.asarray(images), train=False)
    return info["arch"], (logits, features, variables["params"]["classifier"]["kernel"])


def figure_name(checkpoint: str | os.PathLike) -> str:
    """`cams_<name>.png`, named after the checkpoint drawn: its workdir's name (or a `.pth`'s stem)."""
    path = pathlib.Path(checkpoint).resolve()
    if path.name.isdigit() and path.parent.name == "checkpoints":  # one step of a workdir
        path = path.parent.parent
    elif path.name == "checkpoints":
        path = path.parent
    return f"cams_{path.stem if path.suffix == '.pth' else path.name}.png"


def visualize(
    config: ml_collections.ConfigDict, checkpoint: str | os.PathLike, output_dir: str | os.PathLike,
    num_images: int = 8
) -> pathlib.Path:
    """Draws the CAMs of the student at `checkpoint` (and its teacher) into
    `output_dir/figure_name(checkpoint)`, e.g. `cams_cat_kd.png` for a workdir `.../cat_kd`.

    The first `num_images` test images of `config`'s data; the student is read from
    `checkpoint` (any form `checkpoints.load_variables` reads; a `.pth` takes its architecture
    from `config.student.arch`). For methods with a teacher, the teacher at
    `config.teacher.checkpoint` is drawn first, when that exists. Pooling and normalisation of
    the last columns follow `config.cat_kd`.

    Returns:
      the path of the PNG written (also printed).
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    figure = pathlib.Path(output_dir) / figure_name(checkpoint)
    existed = outputs.check_writable(figure)
    if not pathlib.Path(checkpoint).exists():  # before the data set is read
        raise MissingInputError(f"no checkpoint at {checkpoint}; pass a workdir, checkpoint or model directory, or a .pth")
    source = create_source(config)
    batch = first_test_examples(source, num_images)
    images, num_classes = batch["image"], source.num_classes
    dtype = training.activation_dtype(config)

    networks = {}
    teacher_path = config.teacher.checkpoint
    if methods.needs_teacher(config.method):
        if teacher_path and pathlib.Path(teacher_path).exists():
            arch, teacher_outputs = network_outputs(teacher_path, config.teacher.arch, num_classes, images, dtype)
            networks[f"teacher {arch}"] = teacher_outputs
        else:
            print(f"No teacher at config.teacher.checkpoint={teacher_path!r}; drawing the student only.")
    arch, student_outputs = network_outputs(checkpoint, config.student.arch, num_classes, images, dtype)
    networks[f"student {arch}"] = student_outputs

    class_names = getattr(source, "class_names", None) or [str(i) for i in range(num_classes)]
    path = save_cam_figure(
        figure,
        images,
        batch["label"],
        class_names,
        networks,
        resolution=config.cat_kd.resolution,
        normalize=config.cat_kd.normalize,
        boxes=batch.get("box"),
    )
    print(f"CAM figure: {path}{outputs.replaced_note(path, existed)}")
    return path
