"""llama-cpp-python's OpenAI-compatible server, started with bench's extra-buffer policy (see LlamaCppBackend).

`python -m bench.backends.llamacpp_server --model M.gguf --host 127.0.0.1 --port 8000 ...` takes the same flags
as `python -m llama_cpp.server`. On a machine whose CPU advertises AMX, llama.cpp's repacking buffers are off,
as in the in-process backend, since VMs that advertise AMX may fault on its instructions.
Set BENCH_LLAMA_EXTRA_BUFFERS=1 or 0 to choose by hand.
"""

from __future__ import annotations

import os


def main() -> None:
    from llama_cpp.server.__main__ import main as server_main

    from bench.backends.llamacpp import _model_params, cpu_advertises_amx

    choice = os.environ.get("BENCH_LLAMA_EXTRA_BUFFERS")
    extra = (choice == "1") if choice in ("0", "1") else not cpu_advertises_amx()
    with _model_params(extra):
        server_main()


if __name__ == "__main__":
    main()
