"""Datasets: the built-in synthetic faces, any image folder, and CelebA/MAFL, AFLW (MTFL-style) and 300-W in
their published layouts (README, "Reference training"; ``root`` = the folder they were unpacked into), with the
paper's preprocessing (appendix D.1).

Every dataset yields ``{"image": float32 (3, S, S) in [0, 1], "keypoints": float32 (K, 2) pixel (x, y) (K = 0
when unlabelled), "index": int}`` with ``S = imwidth``; warps, crops, jitter and normalisation are batched on the
training device (:mod:`dve_kernels.warps`, ``loop.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .synthetic import render_faces

__all__ = ["DatasetError", "SyntheticFaces", "ImageFolder", "CelebAMAFL", "AFLWMTFL", "Faces300W", "build_dataset",
           "DATASETS", "stack_items", "centre_cropped", "config_dataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or unreadable; the message names the file."""


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _require_images(root: Path, names: Sequence[str], dataset: str) -> None:
    missing = [str(root / name) for name in names if not (root / name).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatasetError(f"{dataset}: {len(missing)} image file(s) listed in the annotations are missing: "
                           f"{', '.join(missing[:3])}{more}")


def load_rgb(path) -> Image.Image:
    """Open an image as RGB, or raise :class:`DatasetError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def _item(image, keypoints: Optional[np.ndarray], index: int) -> dict:
    """An item from an RGB image (PIL or uint8 ``(S, S, 3)``) and its ``(K, 2)`` keypoints (``None``: unlabelled)."""
    kp = np.zeros((0, 2), np.float32) if keypoints is None else np.asarray(keypoints, np.float32)
    image = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return {"image": image, "keypoints": torch.from_numpy(kp.copy()), "index": index}


def _read_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class _Base(Dataset):
    eye_indices = (0, 1)  # the two eye landmarks (inter-ocular distance)
    has_keypoints = True
    SPLITS = ("train", "test")

    def __init__(self, root, split: str, imwidth: int):
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.root = None if root is None else Path(root)
        self.split, self.imwidth = split, imwidth

    def __len__(self):
        return len(self.names)


class SyntheticFaces(_Base):
    """Procedural faces (:mod:`.synthetic`, ``marks`` per face), deterministic from ``seed``; ``detail < 1``
    renders them at that fraction of ``imwidth`` and resizes them up (bilinear): the same faces with less detail. If
    ``root`` is given, cached there as ``synthetic-<split>-<seed>-<count>-<imwidth>[-m<marks>][-r<rendered>].npz``."""

    _TEST_OFFSET = 10_000_000  # test identities never overlap the training ones

    def __init__(self, root=None, split: str = "train", imwidth: int = 100, count: int = 2000, seed: int = 0,
                 marks: int = 0, detail: float = 1.0, **_):
        super().__init__(root, split, imwidth)
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count, self.seed = count, seed
        if not 0 < detail <= 1:
            raise ValueError(f"detail must be in (0, 1], got {detail}")
        rendered = imwidth if detail == 1 else max(8, int(round(imwidth * detail)))
        name = (f"synthetic-{split}-{seed}-{count}-{imwidth}{f'-m{marks}' if marks else ''}"
                f"{f'-r{rendered}' if rendered != imwidth else ''}.npz")
        cache = None if root is None else self.root / name
        if cache is not None and cache.is_file():
            with np.load(cache) as data:
                self.images, self.keypoints = data["images"], data["keypoints"]
        else:
            start = 0 if split == "train" else self._TEST_OFFSET
            print(f"rendering {count} synthetic {split} faces at {rendered} px"
                  + ("" if cache is None else f" (cached in {cache} for the next run)"), file=sys.stderr, flush=True)
            self.images, self.keypoints = render_faces(seed, count, rendered, start=start, marks=marks)
            if rendered != imwidth:  # pixel centres: x_out + 0.5 = (x_in + 0.5) * imwidth / rendered
                self.images = np.stack([np.asarray(Image.fromarray(image).resize((imwidth, imwidth), Image.BILINEAR))
                                        for image in self.images])
                self.keypoints = ((self.keypoints + 0.5) * (imwidth / rendered) - 0.5).astype(np.float32)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + f".tmp{os.getpid()}.npz")
                np.savez(tmp, images=self.images, keypoints=self.keypoints)
                os.replace(tmp, cache)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return _item(self.images[index], self.keypoints[index], index)


class ImageFolder(_Base):
    """Every image below ``root`` (recursively), resized (shorter side) to ``imwidth`` and centre-cropped."""

    has_keypoints = False
    SPLITS = ("train",)

    def __init__(self, root, split: str = "train", imwidth: int = 100, **_):
        super().__init__(root, split, imwidth)
        if not self.root.is_dir():
            raise DatasetError(f"image folder not found: {self.root}")
        self.names = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.names:
            raise DatasetError(f"image folder {self.root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __getitem__(self, index):
        image = load_rgb(self.names[index])
        w, h = image.size
        s = self.imwidth / min(w, h)
        nw, nh = max(self.imwidth, round(w * s)), max(self.imwidth, round(h * s))
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.imwidth) // 2, (nh - self.imwidth) // 2
        return _item(image.crop((left, top, left + self.imwidth, top + self.imwidth)), None, index)


class CelebAMAFL(_Base):
    """CelebA aligned faces with the MAFL splits: ``train`` (CelebA's train partition without MAFL images),
    ``mafl_train``, ``mafl_test``; the 218x178 image loses its top 30 and bottom 10 rows, then is resized."""

    SPLITS = ("train", "mafl_train", "mafl_test")
    _TOP, _BOTTOM_KEEP = 30, 178  # rows 30..208 of the 218x178 aligned image

    def __init__(self, root, split: str = "train", imwidth: int = 100, use_hq: bool = False, **_):
        super().__init__(root, split, imwidth)
        self.image_dir = self.root / "Img" / ("img_align_celeba_hq" if use_hq else "img_align_celeba")
        anno = _require_file(self.root / "Anno" / "list_landmarks_align_celeba.txt", "CelebA landmark file")
        partition = _require_file(self.root / "Eval" / "list_eval_partition.txt", "CelebA partition file")
        mafl_train = set(_read_lines(_require_file(self.root / "MAFL" / "training.txt", "MAFL training list")))
        mafl_test = set(_read_lines(_require_file(self.root / "MAFL" / "testing.txt", "MAFL testing list")))
        if not self.image_dir.is_dir():
            raise DatasetError(f"CelebA image folder not found: {self.image_dir}")
        landmarks = {}
        for number, line in enumerate(anno.read_text().splitlines()[2:], start=3):  # count line, header line
            parts = line.split()
            if parts and len(parts) != 11:
                raise DatasetError(f"{anno}:{number}: expected '<image> x1 y1 ... x5 y5', got {line!r}")
            if parts:
                landmarks[parts[0]] = np.array(parts[1:], dtype=np.float32).reshape(5, 2)
        if split == "train":
            parts_of = dict(line.split()[:2] for line in _read_lines(partition))
            names = [n for n, p in parts_of.items() if int(p) == 0 and n not in mafl_train and n not in mafl_test]
        else:
            names = sorted(mafl_train if split == "mafl_train" else mafl_test)
        missing = [n for n in names if n not in landmarks]
        if missing:
            raise DatasetError(f"{anno} has no landmarks for {len(missing)} image(s) of split {split!r}, "
                               f"e.g. {missing[0]}")
        if not names:
            raise DatasetError(f"CelebA/MAFL split {split!r} under {self.root} is empty")
        _require_images(self.image_dir, names, "CelebA")
        self.names = names
        self.keypoints = np.stack([landmarks[n] for n in names]) - np.float32([0, self._TOP])  # in the 178x178 crop

    def __getitem__(self, index):
        image = load_rgb(self.image_dir / self.names[index])
        image = image.crop((0, self._TOP, image.width, self._TOP + self._BOTTOM_KEEP))
        kp = self.keypoints[index] * np.float32([self.imwidth / image.width, self.imwidth / image.height])
        return _item(image.resize((self.imwidth, self.imwidth), Image.BILINEAR), kp, index)


class AFLWMTFL(_Base):
    """AFLW, 5 landmarks: the cropped training faces and the MTFL test faces, resized (aspect ratio not kept)."""

    def __init__(self, root, split: str = "train", imwidth: int = 100, **_):
        super().__init__(root, split, imwidth)
        names, kps = [], []
        if split == "train":
            self.image_dir = self.root / "aflw_cropped"
            table = _require_file(self.image_dir / "facedata_cropped.csv", "AFLW training table")
            lines = [line for line in table.read_text().splitlines() if line.strip()]
            header = [h.strip() for h in lines[0].split(",")]
            for column in ("image_file", "set", "crop_file"):
                if column not in header:
                    raise DatasetError(f"{table}: header has no column {column!r} (got {header})")
            set_col, crop_col = header.index("set"), header.index("crop_file")
            for number, line in enumerate(lines[1:], start=2):
                row = [c.strip() for c in line.split(",")]
                if len(row) < 14:
                    raise DatasetError(f"{table}:{number}: expected at least 14 columns, got {len(row)}")
                if row[set_col] == "1":
                    names.append(row[crop_col])
                    kps.append(np.array(row[4:14], dtype=np.float32).reshape(5, 2))
        else:
            self.image_dir = self.root / "MTFL"
            listing = _require_file(self.image_dir / "testing.txt", "MTFL test list")
            for number, line in enumerate(_read_lines(listing), start=1):
                parts = line.split()
                if len(parts) < 11:
                    raise DatasetError(f"{listing}:{number}: expected '<image> x1..x5 y1..y5', got {line!r}")
                names.append(parts[0].replace("\\", "/"))
                kps.append(np.array(parts[1:11], dtype=np.float32).reshape(2, 5).T)
        if not names:
            raise DatasetError(f"AFLW split {split!r} under {self.root} is empty")
        _require_images(self.image_dir, names, "AFLW")
        self.names = names
        self.keypoints = np.stack(kps) - 1.0  # 1-based (MATLAB) to 0-based

    def __getitem__(self, index):
        image = load_rgb(self.image_dir / self.names[index])
        kp = self.keypoints[index] * np.float32([self.imwidth / image.width, self.imwidth / image.height])
        return _item(image.resize((self.imwidth, self.imwidth), Image.BILINEAR), kp, index)


def _read_pts(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"300-W landmark file not found: {path}")
    text = path.read_text()
    try:
        body = text[text.index("{") + 1:text.index("}")]
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as error:
        raise DatasetError(f"cannot parse 300-W landmark file {path}: {error}") from error
    if values.size != 136:
        raise DatasetError(f"{path}: expected 68 points, got {values.size / 2:g}")
    return values.reshape(68, 2)


class Faces300W(_Base):
    """300-W, 68 landmarks, the common 3148/689 split; the ground-truth box, made square, fills the central 52% of
    the crop."""

    eye_indices = (36, 45)  # outer eye corners, the usual inter-ocular normalisation
    _SUBSETS = {
        "train": (("afw", "afw"), ("helen_trainset", "helen/trainset"), ("lfpw_trainset", "lfpw/trainset")),
        "test": (("helen_testset", "helen/testset"), ("lfpw_testset", "lfpw/testset"), ("ibug", "ibug")),
    }
    FACE_FRACTION = 0.52  # the box's width fills the central 52% of the crop

    def __init__(self, root, split: str = "train", imwidth: int = 100, **_):
        from scipy.io import loadmat

        super().__init__(root, split, imwidth)
        self.names, self.boxes, self.points = [], [], []
        for box_name, folder in self._SUBSETS[split]:
            mat_path = _require_file(self.root / "Bounding Boxes" / f"bounding_boxes_{box_name}.mat",
                                     "300-W bounding-box file")
            try:
                entries = loadmat(str(mat_path))["bounding_boxes"]
            except Exception as error:  # scipy raises several types for corrupt files
                raise DatasetError(f"cannot read 300-W bounding-box file {mat_path}: {error}") from error
            for i in range(entries.shape[1]):
                entry = entries[0, i]
                name = str(entry["imgName"][0, 0][0])
                box = np.asarray(entry["bb_ground_truth"][0, 0][0], dtype=np.float64)
                # Only the iBUG entries named image_* exist among the distributed iBUG images.
                if box_name == "ibug" and not name.startswith("image"):
                    continue
                self.names.append(f"{folder}/{name}")
                self.boxes.append(box)
                self.points.append(_read_pts(self.root / folder / (Path(name).stem + ".pts")))
        if not self.names:
            raise DatasetError(f"300-W split {split!r} under {self.root} is empty")
        _require_images(self.root, self.names, "300-W")

    def __getitem__(self, index):
        image = load_rgb(self.root / self.names[index])
        xmin, ymin, xmax, ymax = self.boxes[index]
        # 1-based MATLAB boxes and points, as distributed.
        width = xmax - xmin + 1
        cx, cy = xmin - 1 + width / 2, (ymin + ymax) / 2 - 1
        side = width / self.FACE_FRACTION
        left, top = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
        size = int(np.ceil(side))
        crop = Image.new("RGB", (size, size))  # the square around the box, zeros outside the image
        crop.paste(image, (-left, -top))
        kp = (self.points[index] - 1.0 - [left, top]) * (self.imwidth / size)
        return _item(crop.resize((self.imwidth, self.imwidth), Image.BILINEAR), kp.astype(np.float32), index)


DATASETS = {"synthetic": SyntheticFaces, "folder": ImageFolder, "celeba": CelebAMAFL, "aflw": AFLWMTFL,
            "300w": Faces300W}

#: (training split, annotated split for fitting the regressor, annotated test split) per dataset.
SPLITS = {"synthetic": ("train", "train", "test"), "folder": ("train", None, None),
          "celeba": ("train", "mafl_train", "mafl_test"), "aflw": ("train", "train", "test"),
          "300w": ("train", "train", "test")}


def stack_items(dataset, indices: Sequence[int]):
    """``(images (N, 3, S, S), keypoints (N, K, 2))`` of the given items."""
    items = [dataset[i] for i in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([it["keypoints"] for it in items])


def centre_cropped(dataset, count: int, crop: int):
    """The first ``count`` items without warps, ``crop`` pixels cut from every side (keypoints moved with them)."""
    images, keypoints = stack_items(dataset, range(min(count, len(dataset))))
    size = images.shape[-1]
    return images[:, :, crop:size - crop, crop:size - crop], keypoints - crop


def config_dataset(config, out, split: str, count: Optional[int] = None) -> Dataset:
    """The configured dataset's ``split`` (``count`` synthetic faces) for a run in ``out``; the synthetic faces
    are cached in ``config.data_root``, by default ``<out>/data``."""
    root = config.data_root
    if root is None and config.dataset == "synthetic":
        root = str(Path(out) / "data")
    return build_dataset(config.dataset, root, split, config.imwidth, **({} if count is None else dict(count=count)),
                         seed=config.faces_seed, marks=config.face_marks, detail=config.face_detail)


def build_dataset(name: str, root=None, split: str = "train", imwidth: int = 100, **kwargs) -> Dataset:
    """A dataset by name (``synthetic``, ``folder``, ``celeba``, ``aflw``, ``300w``)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    if name != "synthetic" and root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (the folder it was unpacked into)")
    return DATASETS[name](root=root, split=split, imwidth=imwidth, **kwargs)
