#!/usr/bin/env bash
# Run .ci/run on a clean clone of HEAD inside a Debian chroot: checks the Debian release this
# machine is not (`make test` and `.ci/run` must work on Debian 12 and 13).
#
#   scripts/ci-in-debian.sh [SUITE]       # SUITE: trixie (Debian 13, default) or bookworm (12)
#
# The chroot is made once with debootstrap (minbase) in CHROOT_DIR (default
# /var/tmp/extplugtest-SUITE) and kept; each run clones HEAD afresh into it. The suite's own
# python3 runs the build, unless HOST_PYTHON_ROOT names an interpreter tree to bind-mount at the
# same path (e.g. /root/.pyenv: its shims and bin/ go first on PATH). The host's resolver, extra CA
# certificates and pip settings are copied in, so that a proxy that works here works there.
# Needs root, debootstrap and a Debian mirror (DEBIAN_MIRROR). Exit code: .ci/run's.
set -euo pipefail

suite=${1:-trixie}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${CHROOT_DIR:-/var/tmp/extplugtest-$suite}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
host_python=${HOST_PYTHON_ROOT:-}

say() { printf '==> ci-in-debian.sh: %s\n' "$*" >&2; }
die() {
    printf 'ci-in-debian.sh: error: %s\n' "$*" >&2
    exit 1
}
((EUID == 0)) || die "needs root (debootstrap, chroot, mounts): run it as root"
command -v debootstrap >/dev/null || die "no debootstrap: apt-get install debootstrap"
[[ -z $host_python || -d $host_python ]] || die "HOST_PYTHON_ROOT=$host_python is no directory"

if [[ ! -x $dir/usr/bin/apt-get ]]; then
    say "debootstrap $suite into $dir"
    mkdir -p "$dir"
    debootstrap --variant=minbase "$suite" "$dir" "$mirror" >&2
fi

# Mounts: the chroot's root is a mount point of its own (`ip netns` remounts / as a slave), and
# every rbind is a slave, so that unmounting it here never propagates back to the host's.
mounted=()
bind() {
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    mount --make-rslave "$2"
    mounted+=("$2")
}
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" || true; done
}
trap cleanup EXIT
bind "$dir" "$dir"
for fs in proc sys dev; do bind "/$fs" "$dir/$fs"; done
[[ -z $host_python ]] || bind "$host_python" "$dir$host_python"

cp /etc/resolv.conf "$dir/etc/resolv.conf"
[[ ! -f /etc/pip.conf ]] || cp /etc/pip.conf "$dir/etc/pip.conf"
shopt -s nullglob
extra_cas=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob

# What a fresh machine of ours has before .ci/run: git, make, a JDK (the Bouncy Castle peer),
# Python with venv when the suite's own is used. .ci/run installs the rest.
packages=(git make ca-certificates iproute2 procps sudo default-jdk-headless)
[[ -n $host_python ]] || packages+=(python3 python3-venv)
say "base packages in the chroot: ${packages[*]}"
chroot "$dir" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -c \
    'apt-get -q update >/dev/null && apt-get -q -y install --no-install-recommends "$@" >/dev/null' \
    _ "${packages[@]}" >&2 || die "apt-get install in the chroot failed"
if ((${#extra_cas[@]})); then
    cp "${extra_cas[@]}" "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
fi

rm -rf "$dir/work/ci"
mkdir -p "$dir/work"
git clone -q "$repo" "$dir/work/ci"
say "$suite: .ci/run on $(git -C "$repo" rev-parse --short HEAD) in $dir/work/ci"

path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[[ -z $host_python ]] || path=$host_python/shims:$host_python/bin:$path
environment=(HOME=/root LANG=C.UTF-8 CI=true "PATH=$path")
[[ -z $host_python ]] || environment+=("PYENV_ROOT=$host_python")
while IFS='=' read -r name _; do
    case $name in
        PIP_* | SSL_CERT_* | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE | http_proxy | https_proxy | no_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY)
            environment+=("$name=${!name}")
            ;;
    esac
done < <(env)
status=0
chroot "$dir" /usr/bin/env -i "${environment[@]}" bash -c 'cd /work/ci && bash .ci/run' || status=$?
say "$suite: .ci/run exited $status"
exit "$status"
