"""The callback allow-list and backoff, on their own."""

import pytest

from management_api.jobs.callbacks import CallbackRefused, backoff_seconds, check_url


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://n8n:5678/webhook-waiting/1", ["n8n"]),  # a bare host allows every port
        ("https://hooks.example.com/x", ["hooks.example.com:443"]),  # the scheme's port
        ("http://HOOKS.example.com./x", ["hooks.example.com"]),  # case and the root dot
        ("http://[::1]:8080/x", ["[::1]:8080"]),
    ],
)
def test_allowed(url, allowed):
    assert check_url(url, allowed) == url


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://n8n:5678/x", []),  # no list: callbacks are off
        ("http://n8n:5678/x", ["n8n:80"]),
        ("http://n8n.evil.com/x", ["n8n"]),
        ("http://169.254.169.254/latest", ["n8n"]),
        ("http://n8n@169.254.169.254/", ["n8n"]),  # the host is what counts, not the user part
        ("file:///etc/passwd", ["n8n"]),
        ("http://n8n:99999/x", ["n8n"]),
        ("http:///x", ["n8n"]),
    ],
)
def test_refused(url, allowed):
    with pytest.raises(CallbackRefused):
        check_url(url, allowed)


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n, 1.0, 5.0) for n in range(1, 6)] == [1, 2, 4, 5, 5]
