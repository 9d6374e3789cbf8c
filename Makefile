# Shuidian — the Makefile is the interface. `make run` and `make test` need only Python ≥ 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PACKAGES := shared services/kit services/protocols services/collector services/billing services/control services/alarm \
            services/api-gateway services/simulator services/devstack services/sdk services/insights
STAMP  := $(VENV)/.installed

.PHONY: install run test test-unit check lint typecheck imports fmt bench chaos lock clean up down test-deploy base-image web web-api web-test

install: $(STAMP)

$(STAMP): requirements.lock $(addsuffix /pyproject.toml,$(PACKAGES))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps $(addprefix -e ,$(PACKAGES))
	@touch $@

run: install web-if-npm ## whole platform + simulated estate (embedded PostgreSQL and broker unless DATABASE_URL / MQTT_URL)
	$(BIN)/python -m shuidian_devstack run

test: install web-if-npm ## every test (the front-end's Vitest and browser tests too); real PostgreSQL and broker (embedded unless DATABASE_URL / MQTT_URL)
	@if [ -d web/node_modules ]; then $(MAKE) --no-print-directory web-test; fi
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not e2e"

check: lint typecheck imports

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy shared/src shared/tests services/*/src services/*/tests tests conftest.py

imports: install ## each service's shape (domain/ is pure; see docs/shape.md), one import-linter contract file per package
	@set -e; for cfg in $(wildcard shared/.importlinter services/*/.importlinter); do \
	  echo "lint-imports $$cfg"; $(BIN)/lint-imports --no-cache $$cfg; done

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## benchmarks: one JSON object per line
	$(BIN)/python -m shuidian_devstack.bench $(BENCH)

chaos: install ## faults against the real stack, then an independent check: one JSON object (CHAOS=soak for the long run)
	$(BIN)/python -m shuidian_devstack.chaos $(or $(CHAOS),short) $(CHAOS_ARGS)

# The front-end (web/: staff console and tenant portal, docs/web.md). Node and npm build it; without
# them `make run` goes on without the web UI and says so.
NPM ?= npm
WEB_SOURCES := $(shell find web/src web/console.html web/portal.html web/vite.config.ts web/tsconfig.json \
                 web/package-lock.json -type f 2>/dev/null)

web: web/dist/.built ## build the console and the portal into web/dist (npm ci against the lockfile, vite build)

web-if-npm: ## `make web` where npm is installed; otherwise say that the console and portal are not built
	@if command -v $(NPM) >/dev/null 2>&1; then $(MAKE) --no-print-directory web; \
	else echo "npm not found: the console and the portal are not built; the API runs without them (see docs/web.md)"; fi

web/node_modules/.installed: web/package-lock.json
	cd web && $(NPM) ci --no-audit --no-fund
	@touch $@

web/dist/.built: web/node_modules/.installed $(WEB_SOURCES)
	cd web && $(NPM) run build
	@touch $@

web-api: install web/node_modules/.installed ## regenerate the typed API client from the gateway's OpenAPI (no server needed)
	GATEWAY_ENVIRONMENT=dev $(BIN)/python -c 'import json, sys; \
	from shuidian_gateway.app import create_app; from shuidian_gateway.settings import GatewaySettings; \
	sys.stdout.write(json.dumps(create_app(GatewaySettings()).openapi(), indent=2, ensure_ascii=False) + "\n")' \
	  > web/openapi.json
	cd web && $(NPM) run --silent api

web-api-check: web-api ## CI: the committed client must be the one the gateway's OpenAPI generates (a changed route breaks the build)
	git diff --exit-code -- web/src/api/schema.d.ts

web-test: web/node_modules/.installed ## Vitest unit tests and the type check of the front-end
	cd web && $(NPM) run --silent typecheck && $(NPM) test

lock: ## re-pin requirements.lock from requirements.in
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile requirements.in -o requirements.lock --python-version 3.11
	$(BIN)/uv pip compile requirements-runtime.in -c requirements.lock -o requirements-runtime.lock --python-version 3.11

COMPOSE  ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PROFILES ?=
STACK    := $(COMPOSE) --env-file deploy/.env -f deploy/compose.yaml -p shuidian $(addprefix --profile ,$(PROFILES))

up: ## containers (needs a Docker engine): secrets once, images, the stack; PROFILES="simulator observability" adds those
	deploy/scripts/init-secrets.sh
	deploy/scripts/build-images.sh
	$(STACK) up -d

down: ## stop the containers (data volumes stay; docs/deploy.md)
	$(STACK) down

base-image: ## the base image from Debian packages (debootstrap + docker import), for machines without a registry
	deploy/scripts/build-base.sh

test-deploy: install ## images, compose stack, broker ACL/TLS, backups, upgrades, alert rules, Kubernetes manifests
	$(BIN)/python -m pip install --quiet kubernetes-validate==1.37.0
	deploy/scripts/test-deploy.sh

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .hypothesis
