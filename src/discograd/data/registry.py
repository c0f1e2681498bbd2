"""Where the standard data sets are published, with their sizes and checksums.

Provenance of every digest (checked again in this repository where the bytes were at hand):

MNIST (LeCun, Cortes & Burges; CC BY-SA 3.0). File sizes as on LeCun's page. SHA-256 of the
``.gz`` files as recorded by TensorFlow Datasets (``url_checksums/mnist.txt``, downloaded
from the cvdf-datasets mirror); MD5 as recorded by torchvision (``datasets/mnist.py``,
checked against the ossci-datasets mirror). No digest of the *uncompressed* IDX files is
published, so a gunzipped copy is read unverified (its header is still checked).

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT). SHA-256 of the ``.gz`` files from
TensorFlow Datasets (``url_checksums/fashion_mnist.txt``), MD5 from torchvision. The
content SHA-256 (of the decompressed IDX bytes) was computed here from Debian's
``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1. Those Debian ``.gz`` files are *not*
byte-identical to the published ones (their gzip header has no file name and another
time stamp), but inserting the name and the time stamps 1504176606 (train) and 1504176627
(t10k) into their header reproduces the published files exactly: size, MD5 and SHA-256
all match. So the deflate streams, hence the IDX bytes, are the published ones.

Binarized MNIST (Larochelle & Murray, 2011, the sampling of Salakhutdinov & Murray, 2008).
Sizes and SHA-256 of the ``.amat`` files from TensorFlow Datasets
(``url_checksums/binarized_mnist.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from discograd.data.checksum import RemoteFile

# Mirrors are tried in order. A mirror serving other bytes fails the checksum and the next
# one is tried, so unofficial mirrors are safe to list.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
BINARIZED_MNIST_MIRRORS = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
    "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
)


def _files(bases: Tuple[str, ...], table: Dict[str, tuple]) -> Dict[str, RemoteFile]:
    """role -> RemoteFile from rows ``role: (name, size, sha256, md5, content_sha256)``."""
    return {
        role: RemoteFile(name, tuple(b + name for b in bases), size, sha, md5, content)
        for role, (name, size, sha, md5, content) in table.items()
    }


@dataclass(frozen=True)
class DatasetSpec:
    """A published data set: its files by role and the facts needed to describe it.

    roles: ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` (IDX sets)
    or ``train``, ``valid``, ``test`` (binarized MNIST). Files are downloaded to the
    sub-folder ``name`` of the data folder; ``folders`` are the sub-folder names other tools
    use (torchvision's ``MNIST/raw``), also searched; ``system_dirs`` are absolute folders
    where OS packages install the files.
    """

    name: str
    title: str
    citation: str
    license: str
    files: Dict[str, RemoteFile]
    folders: Tuple[str, ...] = ()
    system_dirs: Tuple[str, ...] = field(default=())


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST handwritten digits",
    citation="LeCun, Bottou, Bengio & Haffner (1998), http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0",
    files=_files(
        MNIST_MIRRORS,
        {
            "train_images": (
                "train-images-idx3-ubyte.gz",
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                None,
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "d53e105ee54ea40749a09fcbcd1e9432",
                None,
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "9fb629c4189551a2d022fa330f9573f3",
                None,
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ec29112dd5afa0611ce80d1b7f02629c",
                None,
            ),
        },
    ),
    folders=("MNIST/raw", "MNIST"),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST (Zalando article images)",
    citation="Xiao, Rasul & Vollgraf (2017), arXiv:1708.07747",
    license="MIT",
    files=_files(
        FASHION_MNIST_MIRRORS,
        {
            "train_images": (
                "train-images-idx3-ubyte.gz",
                26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                29515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                4422102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "bef4ecab320f06d8554ea6380940ec79",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                5148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
    ),
    folders=("FashionMNIST/raw", "FashionMNIST", "fashion"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)

BINARIZED_MNIST = DatasetSpec(
    name="binarized-mnist",
    title="binarized MNIST (fixed Bernoulli sample of the MNIST intensities)",
    citation=(
        "Larochelle & Murray (2011), AISTATS; sampling of Salakhutdinov & Murray (2008), ICML"
    ),
    license="derived from MNIST (CC BY-SA 3.0)",
    files=_files(
        BINARIZED_MNIST_MIRRORS,
        {
            "train": (
                "binarized_mnist_train.amat",
                78400000,
                "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
                None,
                None,
            ),
            "valid": (
                "binarized_mnist_valid.amat",
                15680000,
                "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
                None,
                None,
            ),
            "test": (
                "binarized_mnist_test.amat",
                15680000,
                "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
                None,
                None,
            ),
        },
    ),
    folders=("binarized_mnist", "BinarizedMNIST"),
)

DATASETS: Dict[str, DatasetSpec] = {s.name: s for s in (MNIST, FASHION_MNIST, BINARIZED_MNIST)}
