"""The service's request guard, piece by piece (the whole service is driven in
tests/integration/test_serving.py): Host names, tokens, metrics labels, invisible queries,
model references."""

from __future__ import annotations

import pytest

from fusion_model.errors import BadInputError
from fusion_model.serving.app import _endpoint_of, check_token, host_name, hosts_for
from fusion_model.serving.searcher import SearchRequestError, check_request, visible_text


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8080", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:80", "::1"),
    ("::1", "::1"), ("127.0.0.1", "127.0.0.1"), ("", ""), ("shop.example:443", "shop.example"),
])
def test_host_names_are_compared_without_port_or_case(header, name):
    assert host_name(header) == name


def test_allowed_hosts_are_normalised_like_the_header():
    allowed = hosts_for("127.0.0.1", ("Shop.Example:8080", "[::1]:80"))
    assert {"shop.example", "::1", "localhost", "127.0.0.1"} <= set(allowed)
    assert not any(":8080" in name for name in allowed)
    assert hosts_for("127.0.0.1", ("*",)) is None


@pytest.mark.parametrize("token", ["pässwort", "two words", "tab\there", "quote\"d"])
def test_tokens_a_client_cannot_send_are_refused(token):
    with pytest.raises(BadInputError, match="printable ASCII"):
        check_token(token)
    check_token("abc-DEF_123.~+/=")


@pytest.mark.parametrize(("path", "label"), [
    ("/search", "/search"), ("/products/P1/image", "/products/{product_id}/image"),
    ("/products/P1/image/x", "other"), ("/nope", "other"), ("/", "/"),
    ("/%2e%2e/etc", "other"),
])
def test_metrics_labels_are_route_templates(path, label):
    assert _endpoint_of(path) == label


def test_queries_are_searched_by_their_visible_characters():
    assert visible_text(" red\u200b\x00 shirt\t\n") == "red shirt"
    assert check_request("red\u200bshirt", 10) == "redshirt"
    with pytest.raises(SearchRequestError, match="invisible"):
        check_request("\u200b\u200d\x00", 10)
    with pytest.raises(SearchRequestError, match="characters"):
        check_request("x" * 5000, 10)


@pytest.mark.parametrize(("argv", "message"), [
    (["--allowed-host", " "], "--allowed-host needs a name"),
    (["--image-root", "/no/such/folder"], "--image-root /no/such/folder: not a folder"),
])
def test_serve_refuses_list_options_that_would_do_nothing(argv, message, capsys):
    from fusion_model.cli import main

    assert main(["serve", "--port", "1", *argv]) == 2
    assert message in capsys.readouterr().err
