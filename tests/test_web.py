"""The web page's routes: the page and its assets from the package, and `POST /explain` over the real trace."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from test_frontier import FRONTIER, MID

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.serving import ServerSettings, create_app
from dynamic_tinybert.web import router

QUESTION = "where does alice live ?"
CONTEXT = "carol lives in rome . alice lives in oslo . bob lives in paris ."


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


@pytest.fixture
def client(qa: QuestionAnswerer) -> TestClient:
    settings = ServerSettings(max_context_chars=200, max_top_k=5)
    app = create_app(qa, name="tiny", settings=settings)
    app.include_router(router(qa, settings))
    return TestClient(app)


def explain(client: TestClient, question: str = QUESTION, context: str = CONTEXT, **parameters):
    return client.post(
        "/explain", json={"inputs": {"question": question, "context": context}, "parameters": parameters}
    )


def test_the_page_and_its_assets_are_served_by_the_server_itself(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text and 'href="static/style.css"' in page.text
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"), ("examples.json", "application/json")]:
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere: works offline


def test_only_the_named_assets_are_served(client):
    assert client.get("/static/__init__.py").status_code == 404
    assert client.get("/static/..%2F__init__.py").status_code == 404


def test_the_shipped_examples_each_have_a_title_a_context_and_a_question(client):
    examples = client.get("/static/examples.json").json()
    assert "CC BY-SA" in examples["source"]
    assert examples["examples"] and all(set(e) == {"title", "context", "question"} for e in examples["examples"])


def test_explain_returns_the_trace_of_the_library_and_names_the_config_in_a_header(client, qa):
    response = explain(client, budget=0.6, top_k=2)
    assert response.status_code == 200
    direct = qa.explain(QUESTION, CONTEXT, budget=0.6, top_k=2).to_dict()
    body = response.json()
    assert body["kept"] == direct["kept"] and body["tokens"] == direct["tokens"]
    assert body["length_config"] == str(MID.length_config) == response.headers["X-Length-Config"]
    assert [a["answer"] for a in body["answers"]] == [a["answer"] for a in direct["answers"]]


def test_explain_takes_the_same_parameters_as_answering(client):
    body = explain(client, length_config=str(MID.length_config)).json()
    assert [len(layer) for layer in body["kept"]] != [len(body["tokens"])] * len(body["kept"])


@pytest.mark.parametrize(
    ("parameters", "said"),
    [
        ({"budget": 0.6, "length_config": "1,1"}, "only one of"),
        ({"budget": 0.01}, "budget"),
        ({"length_config": "nonsense"}, "length"),
        ({"top_kk": 2}, "top_kk"),
    ],
)
def test_explain_refuses_bad_parameters_with_a_422_that_says_why(client, parameters, said):
    response = explain(client, **parameters)
    assert response.status_code == 422
    assert said in str(response.json()["detail"])


def test_explain_refuses_a_context_over_the_servers_limit_naming_it(client):
    response = explain(client, context="alice lives in oslo . " * 20)
    assert response.status_code == 422 and "inputs.context" in response.json()["detail"]
    assert "--max-context-chars" in response.json()["detail"]


def test_explain_refuses_more_answers_than_the_servers_limit(client):
    response = explain(client, top_k=6)
    assert response.status_code == 422 and "top_k" in response.json()["detail"]


def test_explain_refuses_an_empty_question(client):
    response = explain(client, question="  ")
    assert response.status_code == 422 and "question" in response.json()["detail"]


@pytest.mark.slow
def test_fuzzing_explain_from_its_schema_never_gets_a_5xx_and_every_response_conforms(qa):
    """schemathesis draws /explain requests from the OpenAPI schema, valid and not."""
    settings = ServerSettings(max_context_chars=5_000)
    app = create_app(qa, settings=settings)
    app.include_router(router(qa, settings))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/explain"]
    calls = {mode: 0 for mode in schemathesis.GenerationMode}
    for mode in schemathesis.GenerationMode:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
        def call(case):
            calls[case.meta.generation.mode] += 1
            # a schema cannot say every rule (a length config's layers, the server's limits): a valid body may 422
            case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

        call()
    assert all(n >= 20 for n in calls.values()), calls
