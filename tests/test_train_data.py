"""Datasets: synthetic faces, and every loader on a small fixture tree in its published layout, bad data."""

import numpy as np
import pytest
import torch
from PIL import Image

from dve_kernels.train.data import (AFLWMTFL, CelebAMAFL, DatasetError, Faces300W, ImageFolder, SyntheticFaces,
                                    build_dataset)
from dve_kernels.train.synthetic import render_face

MARK = (255, 0, 0)


def _marked_image(width, height, point, seed=0):
    """Dark noise with a 5x5 pure red square centred on ``point`` (pixel x, y)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    x, y = int(round(point[0])), int(round(point[1]))
    array[y - 2:y + 3, x - 2:x + 3] = MARK
    return Image.fromarray(array)


def _red_centroid(image):
    """Centroid of the red marker in a (3, H, W) tensor in [0, 1]."""
    red = (image[0] - image[1:].max(0).values).clamp(min=0)
    weight = red * (red > 0.5)
    ys, xs = torch.meshgrid(torch.arange(image.shape[1]).float(), torch.arange(image.shape[2]).float(),
                            indexing="ij")
    return torch.stack(((weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()))


# ------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_faces_are_deterministic_and_varied(tmp_path):
    a_img, a_kp = render_face(0, 3, 64)
    b_img, b_kp = render_face(0, 3, 64)
    c_img, c_kp = render_face(0, 4, 64)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8 and a_kp.shape == (5, 2)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_kp, b_kp)
    assert np.abs(a_img.astype(int) - c_img.astype(int)).mean() > 10
    assert np.abs(a_kp - c_kp).max() > 1.0
    train = SyntheticFaces(tmp_path, "train", imwidth=48, count=12, seed=1)
    test = SyntheticFaces(tmp_path, "test", imwidth=48, count=12, seed=1)
    assert (tmp_path / "synthetic-train-1-12-48.npz").is_file()
    cached = SyntheticFaces(tmp_path, "train", imwidth=48, count=12, seed=1)
    assert np.array_equal(cached.images, train.images)
    assert not np.array_equal(train.images, test.images)
    item = train[5]
    assert item["image"].shape == (3, 48, 48) and item["keypoints"].shape == (5, 2)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    kp = torch.from_numpy(train.keypoints)
    assert (kp[:, 0, 0] < kp[:, 1, 0]).all() and (kp[:, 3, 0] < kp[:, 4, 0]).all()  # left before right
    assert (kp[:, 2, 1] > kp[:, 0, 1]).all() and (kp[:, 3, 1] > kp[:, 2, 1]).all()  # eyes, nose, mouth top-down
    assert kp.min() > 0 and kp.max() < 47


def test_synthetic_marks_change_only_the_face_and_are_identity_specific(tmp_path):
    plain, plain_kp = render_face(0, 3, 64)
    marked, marked_kp = render_face(0, 3, 64, marks=30)
    other, _ = render_face(0, 4, 64, marks=30)
    assert np.array_equal(plain_kp, marked_kp)  # same face, same landmarks: the marks have their own stream
    changed = np.abs(plain.astype(int) - marked.astype(int)).max(-1) > 30
    assert changed.sum() > 60, changed.sum()  # 30 marks of about 1.5 px radius at this size
    ys, xs = np.nonzero(changed)
    centre = plain_kp.mean(0)
    eye_gap = np.linalg.norm(plain_kp[1] - plain_kp[0])
    assert np.hypot(xs - centre[0], ys - centre[1]).max() < 3.2 * eye_gap  # on the face and hair only
    changed_other = np.abs(render_face(0, 4, 64)[0].astype(int) - other.astype(int)).max(-1) > 30
    assert (changed & changed_other).sum() < 0.5 * changed.sum()  # other identities: marks elsewhere
    SyntheticFaces(tmp_path, "train", imwidth=32, count=2, seed=1, marks=30)
    assert (tmp_path / "synthetic-train-1-2-32-m30.npz").is_file()


def test_synthetic_eye_landmarks_sit_on_the_pupils():
    # Pupils are drawn black and centred on the eye landmarks: the landmark pixel is the darkest around it.
    for index in range(6):
        image, kp = render_face(2, index, 128)
        grey = image.astype(float).mean(-1)
        for k in (0, 1):
            x, y = np.round(kp[k]).astype(int)
            assert grey[y, x] < 40, (index, k, grey[y, x])
            window = grey[y - 6:y + 7, x - 6:x + 7]
            wy, wx = np.unravel_index(window.argmin(), window.shape)
            assert abs(wy - 6) <= 2 and abs(wx - 6) <= 2


# ------------------------------------------------------------------------------------------------ fixture trees
def _celeba_tree(root, names_parts, landmarks):
    (root / "Img" / "img_align_celeba").mkdir(parents=True)
    (root / "Anno").mkdir()
    (root / "Eval").mkdir()
    (root / "MAFL").mkdir()
    lines = [str(len(names_parts)),
             "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x "
             "rightmouth_y"]
    for (name, _), kp in zip(names_parts, landmarks):
        _marked_image(178, 218, kp[2]).save(root / "Img" / "img_align_celeba" / name)
        lines.append(name + "    " + " ".join(str(int(v)) for v in kp.reshape(-1)))
    (root / "Anno" / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "Eval" / "list_eval_partition.txt").write_text(
        "".join(f"{name} {part}\n" for name, part in names_parts))


def test_celeba_mafl_layout_splits_and_preprocessing(tmp_path):
    names = [f"{i:06d}.jpg" for i in range(1, 9)]
    parts = [0, 0, 0, 0, 0, 1, 2, 0]
    rng = np.random.default_rng(0)
    landmarks = np.stack([np.array([[70, 110], [108, 110], [89, 130], [72, 150], [106, 150]]) + rng.integers(-5, 5)
                          for _ in names])
    _celeba_tree(tmp_path, list(zip(names, parts)), landmarks)
    (tmp_path / "MAFL" / "training.txt").write_text("000002.jpg\n000003.jpg\n")
    (tmp_path / "MAFL" / "testing.txt").write_text("000004.jpg\n")
    train = CelebAMAFL(tmp_path, "train", imwidth=100)
    assert train.names == ["000001.jpg", "000005.jpg", "000008.jpg"]  # partition 0 minus MAFL
    assert len(CelebAMAFL(tmp_path, "mafl_train", imwidth=100)) == 2
    test = CelebAMAFL(tmp_path, "mafl_test", imwidth=100)
    item = test[0]
    assert item["image"].shape == (3, 100, 100)
    expected = (landmarks[3] - [0, 30]) * 100 / 178  # top 30 rows removed, 178x178 resized to 100
    assert torch.allclose(item["keypoints"], torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    assert (_red_centroid(item["image"]) - item["keypoints"][2]).abs().max() < 0.8
    assert build_dataset("celeba", tmp_path, "mafl_test", 64)[0]["image"].shape == (3, 64, 64)


def test_aflw_mtfl_layout(tmp_path):
    crops = tmp_path / "aflw_cropped"
    (crops / "crops").mkdir(parents=True)
    header = "image_file,set,crop_file,face_id," + ",".join(f"{a}{i}" for i in range(1, 6) for a in "xy")
    rows = [header]
    for i in range(4):
        kp = np.array([[50, 60], [100, 60], [75, 85], [55, 110], [95, 110]]) + i
        name = f"crops/{i}.jpg"
        _marked_image(150, 150, kp[2] - 1).save(crops / name)  # 1-based in the table
        rows.append(f"image{i}.jpg,{1 if i < 3 else 2},{name},{i}," + ",".join(str(v) for v in kp.reshape(-1)))
    (crops / "facedata_cropped.csv").write_text("\n".join(rows) + "\n")
    mtfl = tmp_path / "MTFL"
    (mtfl / "AFLW").mkdir(parents=True)
    kp = np.array([[40, 50], [80, 52], [60, 70], [45, 90], [78, 91]])
    _marked_image(120, 120, kp[2] - 1).save(mtfl / "AFLW" / "0001-image1.jpg")
    line = "AFLW\\0001-image1.jpg " + " ".join(str(v) for v in kp[:, 0]) + " " + \
        " ".join(str(v) for v in kp[:, 1]) + " 1 2 2 3"
    (mtfl / "testing.txt").write_text(line + "\n")
    train = AFLWMTFL(tmp_path, "train", imwidth=100)
    assert len(train) == 3
    item = train[1]
    expected = (np.array([[50, 60], [100, 60], [75, 85], [55, 110], [95, 110]]) + 1 - 1) * 100 / 150
    assert torch.allclose(item["keypoints"], torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    assert (_red_centroid(item["image"]) - item["keypoints"][2]).abs().max() < 0.8
    test = AFLWMTFL(tmp_path, "test", imwidth=60)
    item = test[0]
    assert item["image"].shape == (3, 60, 60)
    assert torch.allclose(item["keypoints"], torch.tensor((kp - 1) * 60 / 120, dtype=torch.float32), atol=1e-4)
    assert (_red_centroid(item["image"]) - item["keypoints"][2]).abs().max() < 0.8


def _write_300w(root, split_entries):
    from scipy.io import savemat

    (root / "Bounding Boxes").mkdir(parents=True)
    for box_name, folder, entries in split_entries:
        (root / folder).mkdir(parents=True, exist_ok=True)
        cells = np.empty((1, len(entries)), dtype=object)
        for i, (name, box, points) in enumerate(entries):
            cells[0, i] = {"imgName": name, "bb_detector": np.array([[0.0, 0, 1, 1]]),
                           "bb_ground_truth": np.array([box], dtype=float)}
            if points is not None:
                _marked_image(200, 160, points[30] - 1, seed=i).save(root / folder / name)
                body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
                (root / folder / (name.rsplit(".", 1)[0] + ".pts")).write_text(
                    f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")
        savemat(str(root / "Bounding Boxes" / f"bounding_boxes_{box_name}.mat"), {"bounding_boxes": cells})


def _face_points(rng, box):
    xmin, ymin, xmax, ymax = box
    pts = rng.uniform([xmin + 10, ymin + 10], [xmax - 10, ymax - 10], (68, 2))
    pts[30] = [(xmin + xmax) / 2, (ymin + ymax) / 2]
    return pts


def test_300w_layout_and_crop(tmp_path):
    rng = np.random.default_rng(0)
    box = [60.0, 40.0, 140.0, 130.0]
    entries = {}
    for box_name, folder in (("afw", "afw"), ("helen_trainset", "helen/trainset"),
                             ("lfpw_trainset", "lfpw/trainset"), ("helen_testset", "helen/testset"),
                             ("lfpw_testset", "lfpw/testset"), ("ibug", "ibug")):
        names = ["image_001.jpg", "image_002.png"] if box_name == "ibug" else [f"{box_name}_1.jpg"]
        entries[box_name] = (box_name, folder, [(n, box, _face_points(rng, box)) for n in names])
    # an iBUG box entry whose image is not distributed (the original skips names not starting with "image")
    entries["ibug"][2].append(("other.jpg", box, None))
    _write_300w(tmp_path, entries.values())
    train = Faces300W(tmp_path, "train", imwidth=100)
    test = Faces300W(tmp_path, "test", imwidth=100)
    assert len(train) == 3 and len(test) == 4
    assert Faces300W.eye_indices == (36, 45)
    item = test[0]
    assert item["image"].shape == (3, 100, 100) and item["keypoints"].shape == (68, 2)
    # The box (81 px wide) fills the central 52%: box corners land at 24..76 of 100.
    scale = 100 * 0.52 / 81
    points = entries["helen_testset"][2][0][2]
    assert abs(float(item["keypoints"][:, 0].max() - item["keypoints"][:, 0].min())
               - (points[:, 0].max() - points[:, 0].min()) * scale) < 0.2
    assert (item["keypoints"][30] - 50).abs().max() < 1.5  # the box centre is the crop centre
    assert (_red_centroid(item["image"]) - item["keypoints"][30]).abs().max() < 1.0


def test_image_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _marked_image(80, 40, (40, 20)).save(tmp_path / "a" / "one.jpg")
    _marked_image(30, 30, (15, 15)).save(tmp_path / "a" / "b" / "two.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, imwidth=32)
    assert len(data) == 2
    item = data[0]
    assert item["image"].shape == (3, 32, 32) and item["keypoints"].shape == (0, 2)
    assert (_red_centroid(item["image"]) - torch.tensor([15.5, 15.5])).abs().max() < 1.0  # centre-cropped


# ---------------------------------------------------------------------------------------------------- bad data
def test_bad_data_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="contains no images"):
        (tmp_path / "empty").mkdir()
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="image folder not found"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.jpg"):
        ImageFolder(tmp_path / "broken")[0]
    with pytest.raises(DatasetError, match=r"CelebA landmark file not found: .*list_landmarks_align_celeba\.txt"):
        CelebAMAFL(tmp_path / "nowhere")
    # a listed image that is missing
    root = tmp_path / "celeba"
    _celeba_tree(root, [("000001.jpg", 0), ("000002.jpg", 0)], np.full((2, 5, 2), 80))
    (root / "MAFL" / "training.txt").write_text("")
    (root / "MAFL" / "testing.txt").write_text("000002.jpg\n")
    (root / "Img" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"missing: .*000002\.jpg"):
        CelebAMAFL(root, "mafl_test")
    assert len(CelebAMAFL(root, "train")) == 1
    with pytest.raises(DatasetError, match=r"MTFL test list not found: .*testing\.txt"):
        AFLWMTFL(tmp_path, "test")
    with pytest.raises(DatasetError, match=r"bounding_boxes_afw\.mat"):
        Faces300W(tmp_path, "train")
    with pytest.raises(ValueError, match="needs --data-root"):
        build_dataset("celeba", None)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_dataset("imagenet", tmp_path)
