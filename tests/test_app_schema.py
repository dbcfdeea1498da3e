"""Property-based API tests: schemathesis generates requests from the OpenAPI schema and checks
the live server (uvicorn on loopback) never answers 5xx and answers as documented."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app_support import PredictRequest, fake_card, fake_predict, make_models, running_server
from terrastill.app.main import create_app
from terrastill.app.settings import Settings

schemathesis = pytest.importorskip("schemathesis")


def test_openapi_schema_is_complete(tmp_path):
    s = Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data")
    spec = create_app(s, read_card=fake_card).openapi()
    ops = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert ops == {
        ("get", "/api/health"),
        ("get", "/api/models"),
        ("get", "/api/jobs"),
        ("post", "/api/jobs"),
        ("get", "/api/jobs/{job_id}"),
        ("delete", "/api/jobs/{job_id}"),
        ("get", "/api/jobs/{job_id}/tilejson.json"),
        ("get", "/api/jobs/{job_id}/tiles/{z}/{x}/{y}.png"),
        ("get", "/api/jobs/{job_id}/download"),
        ("get", "/api/catalog"),
        ("get", "/api/imagery/tilejson.json"),
        ("get", "/api/imagery/tiles/{z}/{x}/{y}.png"),
    }
    for path, item in spec["paths"].items():
        for method, op in item.items():
            ok = op["responses"].get("200") or op["responses"].get("201")
            assert ok and ok.get("content"), (method, path)
            assert op.get("summary"), (method, path)
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


@pytest.mark.slow
def test_no_server_errors_from_generated_requests(tmp_path):
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    s = Settings(
        models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data", max_aoi_km2=50
    )
    app = create_app(s, predict_fn=fake_predict, request_cls=PredictRequest, read_card=fake_card)
    with running_server(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        strategy = schema.as_strategy()
        checks = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data):
            case = data.draw(strategy)
            case.call_and_validate(base_url=url, checks=checks, timeout=20)

        run()
