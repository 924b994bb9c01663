#!/usr/bin/env bash
# Fetch a dataset into the folder that data_loader.py reads (default ./data, or $SAGAN_DATA_DIR).
#
#   bash download.sh CelebA               -> data/CelebA/img_align_celeba/*.jpg      (1.4 GB)
#   bash download.sh LSUN [category]      -> data/<category>_train_lmdb/             (church_outdoor: 2.3 GB)
#   bash download.sh cifar10              -> data/cifar-10-batches-py/               (163 MB)
#   bash download.sh fashion_mnist        -> data/fashion-mnist/*-ubyte.gz                  (30 MB)
#                                            (nothing to fetch when Debian's dataset-fashion-mnist is installed)
#   bash download.sh inception            -> data/weights-inception-2015-12-05-6726825d.pth (91 MB)
#                                            the TF-Inception weights that metrics.py (IS/FID) reads
#   bash download.sh mmgen_<name>         -> data/checkpoints/mmgen_<name>/<published file name>
#                                            an OpenMMLab SAGAN/SNGAN-proj checkpoint (names: bash download.sh mmgen)
#                                            for `python convert.py mmgen_<name> ...`
#
# Downloads go to <file>.part and resume after an interruption (curl -C -); a server that refuses to
# resume gets a fresh download. Archives are verified before unpacking: MD5 where the dataset
# publishes one (CelebA, CIFAR-10), and the CRC-32 of every zip member (LSUN publishes no checksum;
# set SAGAN_LSUN_MD5 to check one), and the SHA-256 prefix that the Inception file's name carries (the
# torch.hub convention). Unpacking refuses members with absolute paths or '..'.
# Base URLs and checksums can be overridden: SAGAN_CELEBA_URL, SAGAN_CELEBA_MD5, SAGAN_LSUN_BASE,
# SAGAN_LSUN_MD5, SAGAN_CIFAR10_URL, SAGAN_CIFAR10_MD5, SAGAN_INCEPTION_URL, SAGAN_INCEPTION_SHA256,
# SAGAN_MMGEN_BASE, SAGAN_MMGEN_SHA256, SAGAN_FMNIST_BASE, SAGAN_FMNIST_MD5S (four MD5s, in the order below). Only https is used (plain http only for
# 127.0.0.1/localhost, which the tests serve from).
set -euo pipefail

usage() {
    echo "usage: bash download.sh CelebA | LSUN [category] | cifar10 | fashion_mnist | inception | mmgen_<name> | studiogan_<name>   (into \${SAGAN_DATA_DIR:-./data})" >&2
    exit 2
}

DATA_DIR="${SAGAN_DATA_DIR:-./data}"
CELEBA_URL="${SAGAN_CELEBA_URL:-https://s3-us-west-1.amazonaws.com/udacity-dlnfd/datasets/celeba.zip}"
CELEBA_MD5="${SAGAN_CELEBA_MD5-00d2c5bc6d35e252742224ab0c1e8fcb}"
LSUN_BASE="${SAGAN_LSUN_BASE:-https://dl.yf.io/lsun/scenes}"
LSUN_MD5="${SAGAN_LSUN_MD5-}"
CIFAR10_URL="${SAGAN_CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz}"
CIFAR10_MD5="${SAGAN_CIFAR10_MD5-c58f30108f718f92721af3b95e74349a}"
INCEPTION_NAME="weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL="${SAGAN_INCEPTION_URL:-https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/$INCEPTION_NAME}"
INCEPTION_SHA256="${SAGAN_INCEPTION_SHA256-6726825d}"
MMGEN_BASE="${SAGAN_MMGEN_BASE:-https://download.openmmlab.com/mmediting}"
# Fashion-MNIST's own repository (its S3 mirror, which torchvision uses, serves plain http only).
FMNIST_BASE="${SAGAN_FMNIST_BASE:-https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion}"
# name and MD5 of the four files, as torchvision's FashionMNIST.resources lists them
FMNIST_FILES="
train-images-idx3-ubyte.gz 8d4fb7e6c68d591d4c3dfef9ec88bf0d
train-labels-idx1-ubyte.gz 25c81989df183df01b3e8a0aad5dffbe
t10k-images-idx3-ubyte.gz bef4ecab320f06d8554ea6380940ec79
t10k-labels-idx1-ubyte.gz bb300cfdad3c16e7a12a480ee83cd310
"
DEBIAN_FMNIST="${SAGAN_FMNIST_DEBIAN_DIR:-/usr/share/datasets/fashion-mnist}"  # where dataset-fashion-mnist installs
PYTHON="${PYTHON:-python3}"

# The OpenMMLab model zoo's SAGAN and SNGAN-projection files (README, "Published checkpoints"):
# short name, path under $MMGEN_BASE. The last 8 hex digits of each name are its SHA-256 prefix.
MMGEN_FILES="
sagan_cifar10_32_woinplace_is sagan/sagan_cifar10_32_lr2e-4_ndisc5_b64x1_woReUinplace_is-iter400000_20210730_125743-4008a9ca.pth
sagan_cifar10_32_woinplace_fid sagan/sagan_cifar10_32_lr2e-4_ndisc5_b64x1_woReUinplace_fid-iter480000_20210730_125449-d50568a4.pth
sagan_cifar10_32_winplace_is sagan/sagan_cifar10_32_lr2e-4_ndisc5_b64x1_wReLUinplace_is-iter380000_20210730_124937-c77b4d25.pth
sagan_cifar10_32_winplace_fid sagan/sagan_cifar10_32_lr2e-4_ndisc5_b64x1_wReLUinplace_fid-iter460000_20210730_125155-cbefb354.pth
sagan_imagenet_128_woinplace_is sagan/sagan_imagenet1k_128_Glr1e-4_Dlr4e-4_ndisc1_b32x4_woReLUinplace_is-iter980000_20210730_163140-cfbebfc6.pth
sagan_imagenet_128_woinplace_fid sagan/sagan_imagenet1k_128_Glr1e-4_Dlr4e-4_ndisc1_b32x4_woReLUinplace_fid-iter950000_20210730_163431-d7916963.pth
sagan_imagenet_128_biggan sagan/sagan_128_woReLUinplace_noaug_bigGAN_imagenet1k_b32x8_Glr1e-4_Dlr-4e-4_ndisc1_20210818_210232-3f5686af.pth
sagan_cifar10_32_studiogan sagan/sagan_32_cifar10_convert-studio-rgb_20210730_153321-080da7e2.pth
sagan_imagenet_128_studiogan sagan/sagan_128_imagenet1k_convert-studio-rgb_20210730_153357-eddb0d1d.pth
sngan_proj_cifar10_32_woinplace_is sngan_proj/sngan_proj_cifar10_32_lr-2e-4_b64x1_woReLUinplace_is-iter400000_20210709_163823-902ce1ae.pth
sngan_proj_cifar10_32_woinplace_fid sngan_proj/sngan_proj_cifar10_32_lr-2e-4_b64x1_woReLUinplace_fid-iter490000_20210709_163329-ba0862a0.pth
sngan_proj_cifar10_32_winplace_is sngan_proj/sngan_proj_cifar10_32_lr-2e-4_b64x1_wReLUinplace_is-iter490000_20210709_202230-cd863c74.pth
sngan_proj_cifar10_32_winplace_fid sngan_proj/sngan_proj_cifar10_32_lr-2e-4-b64x1_wReLUinplace_fid-iter490000_20210709_203038-191b2648.pth
sngan_proj_imagenet_128_woinplace_is sngan_proj/sngan_proj_imagenet1k_128_Glr2e-4_Dlr5e-5_ndisc5_b128x2_woReLUinplace_is-iter952000_20210730_132027-9c884a21.pth
sngan_proj_imagenet_128_woinplace_fid sngan_proj/sngan_proj_imagenet1k_128_Glr2e-4_Dlr5e-5_ndisc5_b128x2_woReLUinplace_fid-iter988000_20210730_131424-061bf803.pth
sngan_proj_imagenet_128_winplace_is sngan_proj/sngan_proj_imagenet1k_128_Glr2e-4_Dlr5e-5_ndisc5_b128x2_wReLUinplace_is-iter944000_20210730_132714-ca0ccd07.pth
sngan_proj_imagenet_128_winplace_fid sngan_proj/sngan_proj_imagenet1k_128_Glr2e-4_Dlr5e-5_ndisc5_b128x2_wReLUinplace_fid-iter988000_20210730_132401-9a682411.pth
sngan_proj_cifar10_32_studiogan sngan_proj/sngan_cifar10_convert-studio-rgb_20210709_111346-2979202d.pth
sngan_proj_imagenet_128_studiogan sngan_proj/sngan_imagenet1k_convert-studio-rgb_20210709_111406-877b1130.pth
"
# StudioGAN's own files on the Hugging Face Hub (Mingguksky/PyTorch-StudioGAN, linked from StudioGAN's README):
# name, run folder, step of the best checkpoint. StudioGAN publishes no checksums; convert.py checks every tensor.
STUDIOGAN_BASE="${SAGAN_STUDIOGAN_BASE:-https://huggingface.co/Mingguksky/PyTorch-StudioGAN/resolve/main}"
STUDIOGAN_FILES="
sagan_imagenet_128 studiogan_official_ckpt/ImageNet_tailored/ImageNet-SAGAN-256-train-2022_03_12_17_11_43 120000
sngan_imagenet_128 studiogan_official_ckpt/ImageNet_tailored/ImageNet-SNGAN-256-train-2022_03_06_03_53_44 472000
"

die() {
    echo "download.sh: $*" >&2
    exit 1
}

check_url() {
    case "$1" in
        https://*) ;;
        http://127.0.0.1[:/]* | http://localhost[:/]*) ;;
        *) die "refusing to download over anything but https: $1" ;;
    esac
}

# fetch URL DEST: download to DEST.part (resuming if possible), then move to DEST.
fetch() {
    local url="$1" dest="$2"
    check_url "$url"
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ]; then
        echo "already downloaded: $dest"
        return 0
    fi
    echo "downloading $url"
    if [ -s "$dest.part" ]; then
        if ! curl -fL --retry 3 --proto '=https,http' -C - -o "$dest.part" "$url"; then
            echo "could not resume $dest.part; downloading again from the start" >&2
            rm -f "$dest.part"
            curl -fL --retry 3 --proto '=https,http' -o "$dest.part" "$url" || die "download failed: $url"
        fi
    else
        curl -fL --retry 3 --proto '=https,http' -o "$dest.part" "$url" || { rm -f "$dest.part"; die "download failed: $url"; }
    fi
    mv "$dest.part" "$dest"
}

# table_row TABLE PREFIX NAME TITLE: the fields after NAME's entry (NAME without PREFIX_) in TABLE; the bare
# PREFIX, or a name TABLE lacks, lists the table on stderr and fails (exit 2 for the caller).
table_row() {
    local table="$1" prefix="$2" name="$3" title="$4" row
    row="$(printf '%s\n' "$table" | awk -v n="${name#"${prefix}"_}" '$1 == n { $1 = ""; sub(/^ /, ""); print }')"
    if [ "$name" = "$prefix" ] || [ -z "$row" ]; then
        [ "$name" = "$prefix" ] || echo "download.sh: unknown checkpoint '$name'" >&2
        echo "$title (bash download.sh ${prefix}_<name>):" >&2
        printf '%s\n' "$table" | awk -v p="$prefix" 'NF { print "  " p "_" $1 }' >&2
        return 2
    fi
    printf '%s\n' "$row"
}

# verify ALGO FILE EXPECTED: the hex digest must start with EXPECTED (a full digest or a prefix);
# skipped when EXPECTED is empty. A mismatching file is deleted.
verify() {
    local algo="$1" file="$2" expected="$3" got
    [ -n "$expected" ] || return 0
    got="$("$PYTHON" -c 'import hashlib, sys
h = hashlib.new(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$algo" "$file")"
    case "$got" in
        "$expected"*) echo "${algo^^} ok: $file" ;;
        *)
            rm -f "$file"
            die "checksum mismatch for $file: expected $algo $expected, got $got; the file was deleted, run the command again"
            ;;
    esac
}

# unpack ARCHIVE DEST_DIR: zip (CRC-checked) or tar.gz; refuses members outside DEST_DIR.
unpack() {
    "$PYTHON" - "$1" "$2" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path, PurePosixPath

archive, dest = Path(sys.argv[1]), Path(sys.argv[2])


def refuse_unsafe(names):
    for n in names:
        p = PurePosixPath(n.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts:
            sys.exit(f"download.sh: refusing {archive}: member {n!r} would be written outside {dest}")


dest.mkdir(parents=True, exist_ok=True)
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        refuse_unsafe(z.namelist())
        bad = z.testzip()
        if bad is not None:
            sys.exit(f"download.sh: CRC check failed for member {bad!r} of {archive}; delete it and run again")
        z.extractall(dest)
else:
    try:
        with tarfile.open(archive) as t:
            refuse_unsafe(t.getnames())
            t.extractall(dest, filter="data")
    except tarfile.TarError as e:
        sys.exit(f"download.sh: {archive} is neither a zip nor a tar archive ({e}); delete it and run again")
print(f"unpacked {archive} into {dest}")
PY
}

# get URL ARCHIVE MD5 DEST: fetch, verify, unpack into DEST.
get() {
    fetch "$1" "$2"
    verify md5 "$2" "$3"
    unpack "$2" "$4"
}

[ $# -ge 1 ] || usage
name="$1"
case "$name" in
    CelebA | celeba | celeb)
        [ $# -eq 1 ] || usage
        get "$CELEBA_URL" "$DATA_DIR/celeba.zip" "$CELEBA_MD5" "$DATA_DIR/CelebA"
        echo "CelebA is in $DATA_DIR/CelebA; train with: python main.py --dataset celeb --imsize 64"
        ;;
    LSUN | lsun)
        [ $# -le 2 ] || usage
        category="${2:-church_outdoor}"
        case "$category" in
            *[!a-z_]* | "") die "invalid LSUN category '$category' (expected e.g. church_outdoor, bedroom, tower)" ;;
        esac
        get "$LSUN_BASE/${category}_train_lmdb.zip" "$DATA_DIR/${category}_train_lmdb.zip" "$LSUN_MD5" "$DATA_DIR"
        echo "LSUN $category is in $DATA_DIR/${category}_train_lmdb; train with: python main.py --dataset lsun --lsun_category $category"
        ;;
    cifar10 | CIFAR10 | cifar)
        [ $# -eq 1 ] || usage
        get "$CIFAR10_URL" "$DATA_DIR/cifar-10-python.tar.gz" "$CIFAR10_MD5" "$DATA_DIR"
        echo "CIFAR-10 is in $DATA_DIR/cifar-10-batches-py; train with: python main.py --dataset cifar10 --imsize 32"
        ;;
    fashion_mnist | fashion-mnist | FashionMNIST)
        [ $# -eq 1 ] || usage
        if [ -z "${SAGAN_FMNIST_BASE:-}" ] && [ -d "$DEBIAN_FMNIST" ]; then
            # Debian's dataset-fashion-mnist recompresses the files (other MD5s): check the idx headers instead.
            "$PYTHON" - "$DEBIAN_FMNIST" "$(cd "$(dirname "$0")" && pwd)" <<'PY' || exit 1
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])  # data_loader.py beside this script
from data_loader import FMNIST_FILES, DatasetError, idx_file, read_idx
folder = Path(sys.argv[1])
try:
    for img, lab, n in FMNIST_FILES.values():
        for base, images in ((img, True), (lab, False)):
            path = idx_file(folder, base)
            if path is None:
                raise DatasetError(f"{folder}/{base}[.gz] is missing; reinstall with: apt-get install --reinstall dataset-fashion-mnist")
            read_idx(path, images, n)
except DatasetError as e:
    sys.exit(f"download.sh: {e}")
print(f"Fashion-MNIST is installed by Debian's dataset-fashion-mnist in {folder} (idx headers ok); nothing to download")
PY
            echo "train with: python main.py --preset fmnist_32 (main.py reads $DEBIAN_FMNIST)"
            exit 0
        fi
        k=0
        printf '%s\n' "$FMNIST_FILES" | while read -r file md5; do
            [ -n "$file" ] || continue
            k=$((k + 1))
            [ -z "${SAGAN_FMNIST_MD5S:-}" ] || md5="$(echo "$SAGAN_FMNIST_MD5S" | awk -v k="$k" '{ print $k }')"
            fetch "$FMNIST_BASE/$file" "$DATA_DIR/fashion-mnist/$file"
            verify md5 "$DATA_DIR/fashion-mnist/$file" "$md5"
        done
        echo "Fashion-MNIST is in $DATA_DIR/fashion-mnist; train with: python main.py --preset fmnist_32"
        ;;
    inception | Inception)
        [ $# -eq 1 ] || usage
        fetch "$INCEPTION_URL" "$DATA_DIR/$INCEPTION_NAME"
        verify sha256 "$DATA_DIR/$INCEPTION_NAME" "$INCEPTION_SHA256"
        echo "Inception weights are in $DATA_DIR/$INCEPTION_NAME; main.py finds them there (or pass --inception_weights)"
        ;;
    mmgen | mmgen_*)
        [ $# -eq 1 ] || usage
        short="${name#mmgen_}"
        rel="$(table_row "$MMGEN_FILES" mmgen "$name" "OpenMMLab checkpoints")" || exit 2
        file="${rel##*/}"
        dest="$DATA_DIR/checkpoints/$name/$file"
        fetch "$MMGEN_BASE/$rel" "$dest"
        hash="${file##*-}"
        verify sha256 "$dest" "${SAGAN_MMGEN_SHA256-${hash%.pth}}"
        echo "$name is in $DATA_DIR/checkpoints/$name/; convert it with: python convert.py $name --version $short --preset ... (docs/checkpoints.md)"
        ;;
    studiogan | studiogan_*)
        [ $# -eq 1 ] || usage
        row="$(table_row "$STUDIOGAN_FILES" studiogan "$name" "StudioGAN checkpoints from the Hugging Face Hub")" || exit 2
        folder="${row% *}"
        step="${row##* }"
        for role in G D; do
            file="model=$role-best-weights-step=$step.pth"
            fetch "$STUDIOGAN_BASE/$folder/$file" "$DATA_DIR/checkpoints/$name/$file"
        done
        echo "$name is in $DATA_DIR/checkpoints/$name/ (StudioGAN publishes no checksums; convert.py checks every tensor);" \
             "convert it with: python convert.py $name --version $name and the flags docs/checkpoints.md gives for it"
        ;;
    *)
        echo "download.sh: unknown dataset '$name'" >&2
        usage
        ;;
esac
