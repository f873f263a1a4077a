#!/usr/bin/env bash
# Build the Lambda package: jwtproxy and its dependencies (pip install . -t) with the config
# beside the handler, in deploy/aws/build/ (template.yaml's CodeUri), zipped to
# deploy/aws/jwtproxy-lambda.zip. Wheels are fetched for the Lambda platform, so the build
# works on any machine: ARCH=x86_64 (default) or aarch64, PYTHON=3.12 (the template's).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
arch="${ARCH:-x86_64}"
python_version="${PYTHON:-3.12}"
build="$here/build"
rm -rf "$build" "$here/jwtproxy-lambda.zip"
mkdir -p "$build"
pip install --quiet --target "$build" --platform "manylinux2014_${arch}" \
  --implementation cp --python-version "$python_version" --only-binary=:all: "$root"
cp "$here/jwtproxy.yaml" "$build/jwtproxy.yaml"
# Lambda's /var/task is read-only: without matching .pyc files every cold start compiles
# every module. Keep (and complete) them when this Python is the target's; else drop them.
if [ "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$python_version" ]; then
  python -m compileall -q "$build"
else
  find "$build" -name '__pycache__' -type d -prune -exec rm -rf {} +
  echo "note: built with Python $(python -V 2>&1 | cut -d' ' -f2), not $python_version: no .pyc" \
       "files shipped (build with python$python_version, e.g. in public.ecr.aws/sam/build-python$python_version)" >&2
fi
(cd "$build" && python -m zipfile -c "$here/jwtproxy-lambda.zip" .)
echo "built $build and $here/jwtproxy-lambda.zip ($(du -sh "$here/jwtproxy-lambda.zip" | cut -f1))"
