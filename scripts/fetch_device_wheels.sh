#!/usr/bin/env bash
# Download the wheels scripts/device_wheels.txt lists into .whl/, for the device machine's
# CPython 3.12 on x86-64 Linux (it reaches no package registry; scripts/device_check.sh installs
# them from there). Run from the repository root on a machine with a registry.
set -euo pipefail
mkdir -p .whl
grep -q '^/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
mapfile -t wheels < <(grep -v '^\s*#' scripts/device_wheels.txt | grep -v '^\s*$')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
ls -1 .whl
