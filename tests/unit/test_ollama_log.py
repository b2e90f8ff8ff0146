import os
import time

from management_api.health import ollama_log

NOW = 1_764_600_000.0  # 2025-12-01T14:40:00Z


def stamp(offset: float) -> str:
    t = time.gmtime(NOW + offset)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".135Z"


def write(tmp_path, lines):
    path = tmp_path / "ollama.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fresh_cuda_error_counts(tmp_path):
    path = write(
        tmp_path,
        [
            f'time={stamp(-30)} level=INFO source=routes.go:1237 msg="Listening on :11434"',
            "ggml_cuda_init: failed to initialize CUDA: operation not supported",
        ],
    )
    errors = ollama_log.recent_errors(path, window_seconds=300, now=NOW)
    assert [e.line for e in errors] == [
        "ggml_cuda_init: failed to initialize CUDA: operation not supported"
    ]
    assert errors[0].at == NOW - 30 + 0.135


def test_old_errors_are_outside_the_window(tmp_path):
    path = write(
        tmp_path,
        [
            f'time={stamp(-3600)} level=ERROR source=server.go:1 msg="llama-server terminated"',
            f'time={stamp(-10)} level=INFO source=routes.go:1 msg="all good"',
        ],
    )
    assert ollama_log.recent_errors(path, window_seconds=300, now=NOW) == []


def test_jetson_noise_and_request_errors_do_not_count(tmp_path):
    path = write(
        tmp_path,
        [
            f'time={stamp(-5)} level=INFO source=gpu.go:217 msg="looking for compatible GPUs"',
            "NvTegraPrivGetProductionMode: Could not read Tegra production mode",
            "Expected on kernels without fuse support",
            '[GIN] 2025/12/01 - 14:39:59 | 500 |      55.691µs |   127.0.0.1 | POST  "/api/x"',
            f'time={stamp(-4)} level=ERROR source=routes.go:1 msg="bad request" error="invalid'
            ' character"',
        ],
    )
    assert ollama_log.recent_errors(path, window_seconds=300, now=NOW) == []


def test_untimed_lines_at_the_top_take_the_next_timestamp(tmp_path):
    path = write(
        tmp_path,
        [
            "CUDA error: out of memory",
            f'time={stamp(-20)} level=INFO source=x.go:1 msg="next"',
        ],
    )
    errors = ollama_log.recent_errors(path, window_seconds=60, now=NOW)
    assert len(errors) == 1 and errors[0].at == NOW - 20 + 0.135


def test_a_log_without_timestamps_uses_its_mtime(tmp_path):
    path = write(tmp_path, ["CUDA error: out of memory"])
    os.utime(path, (NOW - 5, NOW - 5))
    assert len(ollama_log.recent_errors(path, window_seconds=60, now=NOW)) == 1
    os.utime(path, (NOW - 500, NOW - 500))
    assert ollama_log.recent_errors(path, window_seconds=60, now=NOW) == []


def test_only_the_tail_is_read_and_at_most_five_reported(tmp_path):
    filler = [f'time={stamp(-100)} level=INFO source=x.go:1 msg="{"x" * 200}"'] * 5000
    errors = [
        f'time={stamp(-i)} level=ERROR source=s.go:1 msg="llama-server terminated"'
        for i in range(10, 0, -1)
    ]
    path = write(tmp_path, filler + errors)
    found = ollama_log.recent_errors(path, window_seconds=300, now=NOW)
    assert len(found) == ollama_log.MAX_REPORTED
    assert found[-1].at == NOW - 1 + 0.135
