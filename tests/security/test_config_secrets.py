"""A config version is shown only masked: no secret in the config, wherever it is written,
reaches `/admin/config/versions` (its list, its diff, one version's YAML).

Every field the config's models type as a secret is masked, as is every field of the
open-ended parts (litellm's extra parameters, plugin options) whose name says secret, the
password of any URL, and the literal default of a `${VAR:-default}`. A reference to the
environment is shown as the reference: it names the variable, never its value.
"""

from __future__ import annotations

import yaml

from gateway.config import check_text
from gateway.config_versions import diff, masked_view

SECRETS = {
    "provider": "sk-provider-literal-1111", "virtual": "sk-virtual-literal-2222",
    "admin": "sk-admin-literal-3333", "dsn_password": "pg-pass-4444",
    "redis_password": "redis-pass-5555", "hmac": "hmac-literal-6666",
    "simulator": "sim-key-7777", "aws": "aws-secret-8888", "plugin": "plugin-token-9999",
    "default": "sk-default-aaaa", "url_password": "url-pass-bbbb",
}
CONFIG = {
    "model_list": [
        {"model_name": "chat", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_key": SECRETS["provider"],
            "api_base": f"https://svc:{SECRETS['url_password']}@llm.example.com/v1"},
         "model_info": {"quality": 60}},
        {"model_name": "bedrock", "litellm_params": {
            "model": "bedrock/anthropic.claude-3", "aws_secret_access_key": SECRETS["aws"],
            "aws_access_key_id": "${AWS_ACCESS_KEY_ID}"}}],
    "keys": [{"key": SECRETS["virtual"], "name": "app"},
             {"key": f"${{APP_KEY:-{SECRETS['default']}}}", "name": "app2"}],
    "admin_keys": [{"key": SECRETS["admin"], "name": "ops"}],
    "storage": {"backend": "postgres",
                "dsn": f"postgresql://podium:{SECRETS['dsn_password']}@db/podium"},
    "state": {"backend": "redis", "url": f"redis://:{SECRETS['redis_password']}@cache:6379/0"},
    "audit": {"hmac_key": SECRETS["hmac"]},
    "simulator": {"api_key": SECRETS["simulator"]},
    "plugins": [{"name": "audit", "options": {"api_token": SECRETS["plugin"], "level": 3}}],
}


def test_every_secret_is_masked_in_a_view_and_a_diff() -> None:
    text = yaml.safe_dump(CONFIG)
    check_text(text, "test", env={"AWS_ACCESS_KEY_ID": "x"})  # a valid config
    rotated = text.replace(SECRETS["provider"], "sk-provider-rotated-0000")
    shown = masked_view(text) + diff(text, rotated, "a", "b")
    for name, secret in SECRETS.items():
        assert secret not in shown, name
    assert "sk-provider-rotated-0000" not in shown
    assert "${AWS_ACCESS_KEY_ID}" in shown and "${APP_KEY:-***}" in shown
    # The diff still says that the provider key changed, and nothing else did.
    changed = [line for line in diff(text, rotated, "a", "b").splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(changed) == 2 and all("api_key: '*** (fingerprint" in line for line in changed)
    assert "level: 3" in shown and "quality: 60" in shown   # what is not secret stays readable
