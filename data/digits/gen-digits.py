#!/usr/bin/env python3
"""The 8x8 handwritten digits for examples/jacobian_reg and bench/jacobian_reg.py.

Run it with the project venv's python (the one scripts/setup-libtorch made):

    ~/.cache/tch-jacobian/torch-2.11.0/bin/python data/digits/gen-digits.py

scikit-learn is needed by this script only, and is installed into that venv for it alone:

    ~/.cache/tch-jacobian/torch-2.11.0/bin/python -m pip install scikit-learn

Source: sklearn.datasets.load_digits(), the copy of the UCI "Optical Recognition of Handwritten
Digits" test set that ships inside scikit-learn's wheel (1797 images, 8x8, integer pixels 0..16,
10 classes; nothing is downloaded). Split: train_test_split(test_size=360, random_state=0,
stratify=labels) -> 1437 train, 360 test.

Writes next to this file: train-images.npy uint8 [1437, 8, 8], train-labels.npy int64 [1437],
test-images.npy uint8 [360, 8, 8], test-labels.npy int64 [360] (little-endian, C order), and
README.md (license, citation, scikit-learn's version, sha256 of each file).
"""
import hashlib
import os
import sys

import numpy as np

PIP = f"{sys.executable} -m pip install scikit-learn"
try:
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError:
    sys.exit(f"gen-digits: scikit-learn is missing; install it into this venv with\n    {PIP}")

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["train-images.npy", "train-labels.npy", "test-images.npy", "test-labels.npy"]

README = """# The 8x8 handwritten digits

Data of `examples/jacobian_reg` and its PyTorch twin `bench/jacobian_reg.py`: 1797 grayscale
images of handwritten digits, 8x8 pixels with integer values 0..16, 10 classes, as
`sklearn.datasets.load_digits()` returns them (scikit-learn's copy of the test part of the UCI
"Optical Recognition of Handwritten Digits" data set, written by 13 of its 43 writers: 32x32
bitmaps, on-pixels counted in non-overlapping 4x4 blocks). Split with
`sklearn.model_selection.train_test_split(images, labels, test_size=360, random_state=0,
stratify=labels)`.

| file | dtype | shape |
|---|---|---|
{table}

numpy `.npy`, little-endian, C order. The models read `x = pixels / 16` (float32, in [0, 1]).

Class counts (digits 0..9): train {train_counts}, test {test_counts}.

## License and citation

The UCI data set is licensed under the Creative Commons Attribution 4.0 International license
([CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)); these files are a subset of it in
another format. Cite it as:

E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
Repository, 1998, https://doi.org/10.24432/C50P49.

## Regenerating

Written by `data/digits/gen-digits.py` with scikit-learn {sklearn_version} and numpy
{numpy_version} (the data ship in scikit-learn's wheel; nothing is downloaded):

```
~/.cache/tch-jacobian/torch-2.11.0/bin/python -m pip install scikit-learn   # this script only
~/.cache/tch-jacobian/torch-2.11.0/bin/python data/digits/gen-digits.py
```

The split depends on scikit-learn's `train_test_split`; the hashes below tell whether another
version gave the same files.

## sha256

```
{sha}
```
"""


def main():
    d = load_digits()
    images = np.asarray(d.images)
    labels = np.asarray(d.target)
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        sys.exit(f"gen-digits: unexpected shapes {images.shape}, {labels.shape}")
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
        sys.exit("gen-digits: pixels are not integers in 0..16")
    images = images.astype("<u1")
    labels = labels.astype("<i8")
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=360, random_state=0, stratify=labels
    )
    arrays = dict(zip(FILES, [tr_x, tr_y, te_x, te_y]))
    sha = []
    table = []
    for name in FILES:
        a = np.ascontiguousarray(arrays[name])
        path = os.path.join(HERE, name)
        np.save(path, a, allow_pickle=False)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        sha.append(f"{digest}  {name}")
        table.append(f"| `{name}` | {a.dtype.name} | {list(a.shape)} |")
        print(f"{name}: {a.dtype.name} {list(a.shape)} sha256 {digest}")
    counts = lambda y: " ".join(str(c) for c in np.bincount(y, minlength=10))
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write(
            README.format(
                table="\n".join(table),
                train_counts=counts(tr_y),
                test_counts=counts(te_y),
                sklearn_version=sklearn.__version__,
                numpy_version=np.__version__,
                sha="\n".join(sha),
            )
        )
    print(f"class counts: train {counts(tr_y)}; test {counts(te_y)}")
    print(f"wrote {HERE}/README.md (scikit-learn {sklearn.__version__})")


if __name__ == "__main__":
    main()
