#!/bin/sh
# Makes the upstream tarball ../tandem_VERSION.orig.tar.xz that debian/rules builds from:
# the committed tree (git archive HEAD) plus every crate of Cargo.lock vendored into
# vendor/ (cargo vendor), so that the package builds offline. vendor/ is generated here,
# never committed (.gitignore).
#
#   debian/make-orig.sh && dpkg-buildpackage -us -uc        # binary packages
#   debian/make-orig.sh && dpkg-buildpackage -S -us -uc -d  # source package only
set -eu
cd "$(dirname "$0")/.."
version=$(dpkg-parsechangelog -S Version | sed 's/-[^-]*$//')
rm -rf vendor
cargo vendor --locked --versioned-dirs vendor >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# debian/ is not upstream: it travels in the .debian.tar of the source package.
git archive --format=tar --prefix="tandem-$version/" HEAD -- . ":(exclude)debian" > "$tmp/orig.tar"
tar -rf "$tmp/orig.tar" --owner=0 --group=0 --sort=name \
    --mtime="@$(git log -1 --format=%ct)" --transform "s,^,tandem-$version/," vendor
xz -T0 -6 < "$tmp/orig.tar" > "../tandem_$version.orig.tar.xz"
echo "../tandem_$version.orig.tar.xz"
