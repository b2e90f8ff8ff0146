"""LiteLLM's Router in front of several llm-service nodes, driven over stdin/stdout.

Runs in its own virtual environment (``.venv-router``, made by ``make router-venv``): LiteLLM's
dependencies (boto3's python-dateutil<3, certifi) conflict with the project's pins, so it cannot
share ``.venv``. Nothing here touches the network: the model cost map is the bundled one and
every deployment is a node on 127.0.0.1.

Usage: ``python litellm_driver.py CONFIG_JSON``; CONFIG_JSON holds ``model`` (the name clients
ask for), ``nodes`` (``{"id": {"url": proxy_url, ...more litellm_params such as weight}}``) and
``router`` (keyword arguments of ``litellm.Router``). Each input line
``{"n": N, "prompt": "..."}`` sends N chat completions one after the other and answers one
line: a list of ``{"ok", "node", "status", "error", "seconds"}``, ``node`` being the deployment
that answered.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm


def build_router(config: dict) -> litellm.Router:
    model = config["model"]
    model_list = [
        {
            "model_name": model,
            "litellm_params": {
                # Each node's OpenAI-compatible routes, as in overlays/router-litellm.
                "model": f"openai/{model}",
                "api_base": f"{node['url']}/v1",
                "api_key": config.get("api_key", "unused"),
                "max_retries": 0,  # the Router retries, across nodes
                "timeout": config.get("timeout", 30),
                **{k: v for k, v in node.items() if k != "url"},
            },
            "model_info": {"id": node_id},
        }
        for node_id, node in config["nodes"].items()
    ]
    return litellm.Router(model_list=model_list, **config.get("router", {}))


def one_request(router: litellm.Router, model: str, prompt: str) -> dict:
    started = time.monotonic()
    try:
        response = router.completion(
            model=model, messages=[{"role": "user", "content": prompt}], stream=False
        )
    except Exception as exc:  # the test wants every outcome, typed
        return {
            "ok": False,
            "node": None,
            "status": getattr(exc, "status_code", None),
            "error": type(exc).__name__,
            "seconds": round(time.monotonic() - started, 3),
        }
    hidden = getattr(response, "_hidden_params", {}) or {}
    return {
        "ok": bool(response.choices and response.choices[0].message.content),
        "node": hidden.get("model_id"),
        "status": 200,
        "error": None,
        "seconds": round(time.monotonic() - started, 3),
    }


def main() -> int:
    config = json.loads(sys.argv[1])
    litellm.suppress_debug_info = True
    router = build_router(config)
    print(json.dumps({"ready": True, "litellm": version("litellm")}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        results = [
            one_request(router, config["model"], command.get("prompt", "hello"))
            for _ in range(int(command["n"]))
        ]
        print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
