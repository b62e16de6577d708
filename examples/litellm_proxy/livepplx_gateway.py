"""The module the proxy's config.yaml names (``callbacks: livepplx_gateway.callback``): LiteLLM
imports it from the config's folder. One callback per proxy process; its policies are in
config.yaml (``model_info.livepplx``), its metrics on ``$LIVEPPLX_METRICS_PORT`` when set."""

from livepplx.integrations.litellm_proxy import LivepplxCallback

callback = LivepplxCallback()
