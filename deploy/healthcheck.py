"""Exit 0 if the local SmartSocket server answers GET /smartsocket/health with 200, else 1.

The Docker image's HEALTHCHECK runs it. It reads the port and TLS setting from the same env
vars as the server (SMARTSOCKET_PORT or PORT, SMARTSOCKET_ENABLE_ENCRYPTION or
ENABLE_ENCRYPTION), so it follows whatever configured the container. While the server shuts
down, the endpoint answers 503 and the check fails, which is what a load balancer wants.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

from smartsocket.config import Config


def main() -> int:
    try:
        config = Config.from_env()
    except Exception as exc:
        print(f"unhealthy: bad configuration: {exc}", file=sys.stderr)
        return 1
    scheme = "https" if config.enable_encryption else "http"
    url = f"{scheme}://127.0.0.1:{config.port}/smartsocket/health"
    # Our own certificate, on 127.0.0.1: its name will not match, and it need not.
    context = ssl._create_unverified_context() if config.enable_encryption else None
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            ok = response.status == 200
    except Exception as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
