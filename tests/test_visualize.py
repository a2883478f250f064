"""Tests of catkd_jax.visualize: the CAM figure, the --mode visualize entry point, CAM peaks."""

from __future__ import annotations

import pathlib
import struct

import numpy as np
import pytest

from catkd_jax import visualize
from conftest import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """`(width, height)` from the IHDR chunk, which the PNG standard puts first."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def _network(rng, n, h, k, classes):
    return (rng.normal(size=(n, classes)), rng.normal(size=(n, h, h, k)), rng.normal(size=(k, classes)))


def test_cam_figure_is_a_png_of_the_documented_size(tmp_path):
    rng = np.random.default_rng(0)
    n, classes = 3, 5
    networks = {"teacher": _network(rng, n, 8, 16, classes), "student": _network(rng, n, 4, 8, classes)}
    images = rng.uniform(-2.0, 3.0, size=(n, 32, 32, 3))
    boxes = np.array([[2, 3, 20, 30], [0, 0, 32, 32], [10, 12, 14, 16]], np.int32)
    path = visualize.save_cam_figure(
        tmp_path / "sub" / "cams.png", images, rng.integers(0, classes, n),
        ["disc", "square", "triangle", "a very long class name", "ring"], networks,
        resolution=2, normalize=True, boxes=boxes,
    )
    assert path == tmp_path / "sub" / "cams.png"
    width, height = visualize.cam_figure_size(n, 2, 2, resolution=2, normalize=True, boxes=True)
    assert png_size(path) == (round(width * visualize.DPI), round(height * visualize.DPI))
    # One more network adds its CAM group and pooled map; no boxes, no top classes: narrower.
    networks["other"] = _network(rng, n, 2, 4, classes)
    path = visualize.save_cam_figure(
        tmp_path / "plain.png", images[..., :3], np.zeros(n, int), list("abcde"), networks,
        resolution=3, normalize=False, num_top=0,
    )
    width, height = visualize.cam_figure_size(n, 3, 0, resolution=3)
    assert png_size(path) == (round(width * visualize.DPI), round(height * visualize.DPI))


def test_cam_figure_draws_each_hot_spot_where_the_cam_peaks(tmp_path):
    from matplotlib.image import imread  # pylint: disable=import-outside-toplevel

    cells, pixels = 5, 40  # a 5x5 CAM over 40x40 images: 8 image pixels per cell
    kernel = np.eye(2, dtype=np.float32)  # the CAM of class c is feature channel c

    def square_panels(rgb):
        """`(top, left, side, background colour)` of the square single-colour regions, left to right.

        A panel is where its most common colour fills most rows and columns: the CAM over the
        (black) constant image and the pooled map, which are the figure's last two columns.
        """
        colours, inverse, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True,
                                             return_counts=True)
        inverse = inverse.reshape(rgb.shape[:2])
        found = []
        for index in np.argsort(-counts)[:8]:
            mask = inverse == index
            rows = np.flatnonzero(mask.sum(axis=1) >= 0.5 * mask.sum(axis=1).max())
            cols = np.flatnonzero(mask.sum(axis=0) >= 0.5 * mask.sum(axis=0).max())
            contiguous = np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
            if contiguous and len(rows) >= 50 and abs(len(rows) - len(cols)) <= 2:
                found.append((rows[0], cols[0], (len(rows) + len(cols)) / 2, colours[index]))
        return sorted(found, key=lambda panel: panel[1])

    def drawn_peak(rgb, panel):
        """Centre `(y, x)` in figure pixels of what differs from the panel's background."""
        top, left, side, background = panel
        side_px = int(round(side))
        region = rgb[top : top + side_px, left : left + side_px]
        ys, xs = np.nonzero(np.abs(region - background).max(axis=-1) > 16)
        assert len(ys) > 0, "the panel is blank: nothing of the CAM is drawn"
        return top + ys.mean() + 0.5, left + xs.mean() + 0.5

    peaks = []
    for hot in [(1, 3), (3, 1)]:  # transposes of each other, away from the edges
        features = np.zeros((1, cells, cells, 2), np.float32)
        features[0, hot[0], hot[1], 0] = 1.0
        features[0, :, :, 1] = 1.0  # class 1 (not drawn) is flat
        cam = features[0] @ kernel[:, 0]
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert peak == hot
        path = visualize.save_cam_figure(
            tmp_path / f"hot_{hot[0]}_{hot[1]}.png", np.zeros((1, pixels, pixels, 3)), np.array([0]),
            ["hot", "flat"], {"net": (np.zeros((1, 2)), features, kernel)},
            resolution=cells, normalize=False, num_top=0,  # 5 > 4: no values written in the cells
        )
        rgb = np.round(imread(path)[..., :3] * 255).astype(np.int64)
        panels = square_panels(rgb)
        assert len(panels) >= 2, f"expected the CAM and pooled panels, found {panels}"
        cam_panel, pooled_panel = panels[-2:]
        drawn = []
        for panel in (cam_panel, pooled_panel):
            top, left, side, _ = panel
            # The CAM's argmax cell, scaled to the panel: its centre is (i + 0.5) / h of the side.
            expected = (top + (peak[0] + 0.5) / cells * side, left + (peak[1] + 0.5) / cells * side)
            got = drawn_peak(rgb, panel)
            np.testing.assert_allclose(got, expected, atol=2.0, err_msg=f"hot spot {hot}")
            drawn.append(got)
        peaks.append(drawn)
    # Moving the hot spot moves the drawn peak by the two cells it moved, in both panels.
    for before, after in zip(*peaks):
        assert after[0] - before[0] > 1.5 * cam_panel[2] / cells
        assert before[1] - after[1] > 1.5 * cam_panel[2] / cells


def test_cam_figure_refuses_mismatched_shapes(tmp_path):
    rng = np.random.default_rng(0)
    networks = {"student": _network(rng, 2, 4, 8, 5)}
    images, labels = np.zeros((2, 16, 16, 3)), np.zeros(2, int)
    with pytest.raises(ValueError, match="C=4 class names"):
        visualize.save_cam_figure(tmp_path / "a.png", images, labels, list("abcd"), networks,
                                  resolution=2, normalize=False)
    with pytest.raises(ValueError, match="num_top must be in 0..5"):
        visualize.save_cam_figure(tmp_path / "a.png", images, labels, list("abcde"), networks,
                                  resolution=2, normalize=False, num_top=6)
    with pytest.raises(ValueError, match="boxes must be"):
        visualize.save_cam_figure(tmp_path / "a.png", images, labels, list("abcde"), networks,
                                  resolution=2, normalize=False, boxes=np.zeros((2, 2)))


def test_visualize_draws_a_trained_checkpoint(teacher_dir, tmp_path, capsys):
    config = tiny_config()
    config.data.synthetic_test_size = 16
    path = visualize.visualize(config, teacher_dir, tmp_path / "fig", num_images=4)
    assert path == tmp_path / "fig" / f"cams_{teacher_dir.name}.png" and path.is_file()  # named after the run
    width, height = visualize.cam_figure_size(4, 1, 2, resolution=config.cat_kd.resolution,
                                              normalize=config.cat_kd.normalize)
    assert png_size(path) == (round(width * visualize.DPI), round(height * visualize.DPI))
    assert capsys.readouterr().out.strip().endswith(f"CAM figure: {path}")
    # One step of the same run: the same name, and the command says what it replaced.
    step = next((teacher_dir / "checkpoints").iterdir())
    assert visualize.visualize(config, step, tmp_path / "fig", num_images=4) == path
    assert capsys.readouterr().out.strip().endswith(f"CAM figure: {path} (replacing the earlier {path.name})")
    # A distillation config draws its teacher too: two networks.
    config = tiny_config(method="cat_kd", teacher__checkpoint=str(teacher_dir))
    path = visualize.visualize(config, teacher_dir, tmp_path / "fig2", num_images=2)
    width, height = visualize.cam_figure_size(2, 2, 2, resolution=config.cat_kd.resolution,
                                              normalize=config.cat_kd.normalize)
    assert png_size(path) == (round(width * visualize.DPI), round(height * visualize.DPI))


def test_cam_peak_in_box_maps_the_peak_cell_to_its_centre_pixel():
    # One channel and an identity kernel: the CAM of class c is feature channel c.
    features = np.zeros((4, 4, 4, 2), np.float32)
    features[:, 1, 2, 0] = 5.0  # class 0 peaks in cell (1, 2): centre pixel (12, 20) of 32x32
    features[:, 3, 0, 1] = 5.0  # class 1 peaks in cell (3, 0): centre pixel (28, 4)
    kernel = np.eye(2, dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    boxes = np.array([
        [8, 16, 16, 24],  # contains (12, 20)
        [13, 16, 20, 24],  # starts just below y = 12
        [28, 0, 32, 5],  # contains (28, 4): start inclusive
        [20, 0, 28, 8],  # ends at y = 28: end exclusive
    ])
    inside = visualize.cam_peak_in_box(features, kernel, labels, boxes, (32, 32))
    np.testing.assert_array_equal(inside, [True, False, True, False])
    # Non-square images scale each axis on its own: cell (1, 2) of 4x4 over 64x16 is (24, 10).
    inside = visualize.cam_peak_in_box(features[:1], kernel, labels[:1], np.array([[24, 10, 25, 11]]), (64, 16))
    np.testing.assert_array_equal(inside, [True])


def test_visualize_of_a_workdir_of_several_networks_lists_them(tmp_path):
    workdir = tmp_path / "quickstart"  # the quickstart's layout: a teacher and multi-run students
    for network in ("teacher", "vanilla/run_0", "cat_kd/run_0", "cat_kd/run_1"):
        (workdir / network / "checkpoints" / "10").mkdir(parents=True)
    output = tmp_path / "figures"
    with pytest.raises(FileNotFoundError) as refused:
        visualize.visualize(tiny_config(), workdir, output)
    assert str(refused.value) == (f"{workdir} holds several networks: cat_kd/run_0, cat_kd/run_1, teacher, "
                                  f"vanilla/run_0; point --checkpoint at one of them, e.g. {workdir / 'cat_kd/run_0'}")
    with pytest.raises(FileNotFoundError, match=r"holds several networks: run_0, run_1; point --checkpoint"):
        visualize.visualize(tiny_config(), workdir / "cat_kd", output)
    assert not output.exists()
