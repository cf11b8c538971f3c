"""The Qt resource bundle reader (photos of the gcompris corpus source)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aribbps.data.__main__ import main as data_main
from aribbps.data.qt_resources import FLAG_DIRECTORY, FLAG_ZLIB, FLAG_ZSTD, RccError, extract_photos, flat_name, read_rcc


def make_rcc(files: dict[str, tuple[bytes, int]], version: int = 2) -> bytes:
    """A bundle holding ``files`` (path -> (contents, flags)) in one folder level per path part."""
    tree: dict = {}
    for path, value in files.items():
        node = tree
        *folders, leaf = path.split("/")
        for folder in folders:
            node = node.setdefault(folder, {})
        node[leaf] = value
    names = bytearray()
    payload = bytearray()
    nodes: list = []  # packed nodes; a directory's name offset until it is expanded
    node_size = 14 if version == 1 else 22

    def name_offset(name: str) -> int:
        offset = len(names)
        encoded = name.encode("utf-16-be")
        names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return offset

    def pack(name_off: int, flags: int, tail: bytes) -> bytes:
        return struct.pack(">IH", name_off, flags) + tail + (b"" if version == 1 else bytes(8))

    # Breadth first, so each directory's children are consecutive.
    nodes.append(b"")
    queue = [(0, tree)]
    while queue:
        index, children = queue.pop(0)
        first = len(nodes)
        nodes.extend(b"" for _ in children)
        for i, (name, child) in enumerate(sorted(children.items())):
            off = name_offset(name)
            if isinstance(child, dict):
                nodes[first + i] = off  # patched when the child is expanded
                queue.append((first + i, child))
            else:
                blob, flags = child
                data_off = len(payload)
                payload.extend(struct.pack(">I", len(blob)) + blob)
                nodes[first + i] = pack(off, flags, struct.pack(">HHI", 0, 0, data_off))
        own = 0 if index == 0 else nodes[index]
        nodes[index] = pack(own, FLAG_DIRECTORY, struct.pack(">II", len(children), first))
    tree_bytes = b"".join(nodes)
    assert all(len(n) == node_size for n in nodes)
    header = b"qres" + struct.pack(">IIII", version, 0, 0, 0)
    tree_off = len(header)
    data_off = tree_off + len(tree_bytes)
    names_off = data_off + len(payload)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    return header + tree_bytes + bytes(payload) + bytes(names)


def qcompress(blob: bytes) -> bytes:
    return struct.pack(">I", len(blob)) + zlib.compress(blob)


def image_bytes(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    im = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    out = io.BytesIO()
    im.save(out, fmt, lossless=True) if fmt == "WEBP" else im.save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_plain_and_zlib_entries_with_their_paths(version: int) -> None:
    files = {
        "gcompris/src/a/resource/photo.webp": (b"plain bytes", 0),
        "gcompris/src/a/Activity.qml": (qcompress(b"import QtQuick" * 50), FLAG_ZLIB),
        "top.txt": (b"", 0),
    }
    got = dict(read_rcc(make_rcc(files, version)))
    assert got == {
        "gcompris/src/a/resource/photo.webp": b"plain bytes",
        "gcompris/src/a/Activity.qml": b"import QtQuick" * 50,
        "top.txt": b"",
    }


def test_damaged_bundles_raise_rcc_error() -> None:
    good = make_rcc({"d/x.bin": (b"0123456789", 0)})
    with pytest.raises(RccError, match="magic"):
        list(read_rcc(b"qrez" + good[4:]))
    with pytest.raises(RccError, match="version"):
        list(read_rcc(good[:4] + struct.pack(">I", 9) + good[8:]))
    for cut in (3, 10, 30, len(good) - 30, len(good) - 1):
        with pytest.raises(RccError):
            list(read_rcc(good[:cut]))
    with pytest.raises(RccError, match="zlib|length|bytes"):
        list(read_rcc(make_rcc({"x": (struct.pack(">I", 100) + b"not zlib", FLAG_ZLIB)})))
    with pytest.raises(RccError, match="more than"):
        list(read_rcc(make_rcc({"x": (struct.pack(">I", 1 << 31) + zlib.compress(b"a"), FLAG_ZLIB)})))
    with pytest.raises(RccError, match="zstd"):
        list(read_rcc(make_rcc({"x": (b"\x28\xb5\x2f\xfd", FLAG_ZSTD)})))


def test_a_directory_pointing_at_itself_is_refused_not_looped() -> None:
    bundle = bytearray(make_rcc({"d/x.bin": (b"x", 0)}))
    tree = struct.unpack_from(">I", bundle, 8)[0]
    # Root lists one child starting at node 0: itself.
    struct.pack_into(">II", bundle, tree + 6, 1, 0)
    with pytest.raises(RccError, match="cycle"):
        list(read_rcc(bytes(bundle)))


def test_flat_name_is_bundle_folder_and_stem() -> None:
    assert flat_name(Path("/x/erase.rcc"), "gcompris/src/activities/erase/resource/hidden cat.webp", "gc_") == \
        "gc_erase_resource_hidden_cat.webp"
    assert flat_name(Path("b.rcc"), "README") == "b__README"
    assert flat_name(Path("b.rcc"), "d/x/..\\evil\x00é.png") == "b_x_.._evil__.png"


def test_extract_photos_keeps_only_large_enough_rgb_images(tmp_path: Path) -> None:
    bundle = tmp_path / "erase.rcc"
    bundle.write_bytes(make_rcc({
        "a/res/big.webp": (image_bytes("RGB", (40, 32), "WEBP"), 0),
        "a/res/zipped.png": (qcompress(image_bytes("RGB", (32, 48))), FLAG_ZLIB),
        "a/res/small.webp": (image_bytes("RGB", (31, 64), "WEBP"), 0),
        "a/res/alpha.png": (image_bytes("RGBA", (64, 64)), 0),
        "a/res/grey.png": (image_bytes("L", (64, 64)), 0),
        "a/res/broken.webp": (b"RIFF\x00\x00", 0),
        "a/Main.qml": (b"Item {}", 0),
        "a/res/README": (b"Files: big.webp\nLicense: CC-BY-4.0\n", 0),
    }))
    out = tmp_path / "photos"
    written = extract_photos([bundle], out, min_side=32, prefix="gc_", notices_dir=out / "licenses")
    assert (out / "licenses" / "gc_erase_res_README").read_bytes().endswith(b"CC-BY-4.0\n")
    assert sorted(p.name for p in written) == ["gc_erase_res_big.webp", "gc_erase_res_zipped.png"]
    assert sorted(p.name for p in out.iterdir()) == ["gc_erase_res_big.webp", "gc_erase_res_zipped.png", "licenses"]
    with Image.open(out / "gc_erase_res_zipped.png") as im:
        assert im.size == (32, 48)


def test_extract_photos_refuses_two_photos_with_one_name(tmp_path: Path) -> None:
    bundle = tmp_path / "b.rcc"
    photo = image_bytes("RGB", (16, 16))
    bundle.write_bytes(make_rcc({"x/res/p.png": (photo, 0), "y/res/p.png": (photo, 0)}))
    with pytest.raises(RccError, match="both be named"):
        extract_photos([bundle], tmp_path / "out", min_side=8)


def test_cli_extracts_and_reports_bad_bundles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "details.rcc"
    bundle.write_bytes(make_rcc({"d/image/p.png": (image_bytes("RGB", (20, 20)), 0)}))
    assert data_main(["extract-rcc", str(bundle), "--out", str(tmp_path / "o"), "--min-side", "16"]) == 0
    assert (tmp_path / "o" / "details_image_p.png").is_file()
    assert "1 photos from 1 bundles" in capsys.readouterr().out
    broken = tmp_path / "broken.rcc"
    broken.write_bytes(bundle.read_bytes()[:40])
    assert data_main(["extract-rcc", str(broken), "--out", str(tmp_path / "o2")]) == 1
    assert "error:" in capsys.readouterr().err
