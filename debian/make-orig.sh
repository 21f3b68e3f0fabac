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
# Prebuilt libraries have no source and are not for Debian: the Windows import libraries
# (crates never compiled here, but Cargo.lock names them) and vcpkg's test data. Their
# crates' checksum lists are emptied, so cargo does not miss the files (the package
# checksum stays).
find vendor -type f \( -name '*.a' -o -name '*.lib' -o -name '*.dll' \) -print | while read -r lib; do
    crate=$(echo "$lib" | cut -d/ -f2)
    rm -f "$lib"
    sed -i 's/"files":{[^}]*}/"files":{}/' "vendor/$crate/.cargo-checksum.json"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# debian/ is not upstream: it travels in the .debian.tar of the source package.
git archive --format=tar --prefix="tandem-$version/" HEAD -- . ":(exclude)debian" > "$tmp/orig.tar"
tar -rf "$tmp/orig.tar" --owner=0 --group=0 --sort=name \
    --mtime="@$(git log -1 --format=%ct)" --transform "s,^,tandem-$version/," vendor
xz -T0 -6 < "$tmp/orig.tar" > "../tandem_$version.orig.tar.xz"
echo "../tandem_$version.orig.tar.xz"
