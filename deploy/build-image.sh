#!/usr/bin/env bash
# Builds the runbook-worker container image from the repository's Dockerfile with Docker or
# Podman, prints its size, and optionally copies the static binary out (for VMs).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/build-image.sh [OPTIONS]

Builds the runbook-worker container image (Dockerfile at the repository root) and prints its
size. Needs Docker (with BuildKit, the default since Docker 23) or Podman.

Options:
  -t, --tag IMAGE          image name and tag (default: runbook-worker:VERSION)
  -v, --version VERSION    version label (default: the version in Cargo.toml)
  -e, --engine ENGINE      docker or podman, or a path to either (default: $CONTAINER_ENGINE,
                           else the first of docker, podman found on PATH)
      --export-binary PATH also copy the static binary out of the image to PATH (to install
                           it on a VM, see deploy/vm/)
      --push               push the image after building it
  -h, --help               show this help

Exit status: 0 built; 2 bad arguments; 3 no working container engine; 1 the build failed.

Examples:
  deploy/build-image.sh
  deploy/build-image.sh --tag myregistry.azurecr.io/runbook-worker:1.2.0 --push
  deploy/build-image.sh --export-binary ./runbook-worker
EOF
}

die() {
    local status=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$status"
}

# The repository root, found from this script's path with bash alone (no dirname).
script_dir=${BASH_SOURCE[0]%/*}
[[ "$script_dir" != "${BASH_SOURCE[0]}" ]] || script_dir=.
repo_root=$(cd "$script_dir/.." && pwd)

tag=""
version=""
engine="${CONTAINER_ENGINE:-}"
export_binary=""
push=false

while [[ $# -gt 0 ]]; do
    case "$1" in
        -t | --tag)
            [[ $# -ge 2 ]] || die 2 "$1 needs a value such as runbook-worker:1.0.0"
            tag=$2
            shift 2
            ;;
        -v | --version)
            [[ $# -ge 2 ]] || die 2 "$1 needs a value such as 1.0.0"
            version=$2
            shift 2
            ;;
        -e | --engine)
            [[ $# -ge 2 ]] || die 2 "$1 needs a value: docker or podman"
            engine=$2
            shift 2
            ;;
        --export-binary)
            [[ $# -ge 2 ]] || die 2 "$1 needs a file path"
            export_binary=$2
            shift 2
            ;;
        --push)
            push=true
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            die 2 "unknown argument '$1' (see --help)"
            ;;
    esac
done

# The version defaults to the package version, read from Cargo.toml without other tools.
if [[ -z "$version" ]]; then
    while IFS= read -r line; do
        if [[ "$line" =~ ^version[[:space:]]*=[[:space:]]*\"([^\"]+)\" ]]; then
            version=${BASH_REMATCH[1]}
            break
        fi
    done <"$repo_root/Cargo.toml"
    [[ -n "$version" ]] || die 2 "cannot read the version from $repo_root/Cargo.toml; pass --version"
fi
[[ -n "$tag" ]] || tag="runbook-worker:$version"

if [[ -z "$engine" ]]; then
    for candidate in docker podman; do
        if command -v "$candidate" >/dev/null 2>&1; then
            engine=$candidate
            break
        fi
    done
    [[ -n "$engine" ]] || die 3 "no container engine found: install Docker (https://docs.docker.com/engine/install/) or Podman, or set CONTAINER_ENGINE"
fi
command -v "$engine" >/dev/null 2>&1 || die 3 "container engine '$engine' not found on PATH: install it or pass --engine docker|podman"

# A client without a daemon (docker installed, dockerd not running) fails here, not halfway
# through the build.
if ! engine_info=$("$engine" info 2>&1); then
    printf '%s\n' "$engine_info" >&2
    die 3 "'$engine info' failed: start the engine (for Docker: the docker service) or check your permissions on its socket"
fi

# The build context leaves .git out, so the commit `--version` prints is passed in.
git_commit=$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

echo "Building $tag (version $version, commit $git_commit) with $engine"
"$engine" build \
    --file "$repo_root/Dockerfile" \
    --build-arg "VERSION=$version" \
    --build-arg "GIT_COMMIT=$git_commit" \
    --tag "$tag" \
    "$repo_root" || die 1 "the image build failed (see the output above)"

size_bytes=$("$engine" image inspect --format '{{.Size}}' "$tag") || die 1 "cannot inspect the image $tag"
[[ "$size_bytes" =~ ^[0-9]+$ ]] || die 1 "unexpected image size '$size_bytes' from '$engine image inspect'"
size_tenths=$(((size_bytes * 10 + 524288) / 1048576))
printf 'Image %s: %d.%d MiB\n' "$tag" $((size_tenths / 10)) $((size_tenths % 10))
if ((size_bytes > 30 * 1048576)); then
    echo "warning: the image is larger than the 30 MiB target" >&2
fi

if [[ -n "$export_binary" ]]; then
    container=$("$engine" create "$tag") || die 1 "cannot create a container from $tag to copy the binary out"
    if ! "$engine" cp "$container:/usr/local/bin/runbook-worker" "$export_binary"; then
        "$engine" rm "$container" >/dev/null 2>&1 || true
        die 1 "cannot copy the binary out of $tag"
    fi
    "$engine" rm "$container" >/dev/null
    echo "Binary copied to $export_binary (static, x86_64-unknown-linux-musl)"
fi

if [[ "$push" == true ]]; then
    "$engine" push "$tag" || die 1 "pushing $tag failed (are you logged in to the registry?)"
fi
