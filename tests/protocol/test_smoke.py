"""The shortest path through the protocol, on both backends."""

from ..support import TusClient


def test_create_patch_head_get(tus: TusClient) -> None:
    url = tus.new_upload(11, headers={"Upload-Metadata": "filename aGVsbG8udHh0"})
    assert tus.patch(url, 0, b"hello").status_code == 204
    response = tus.patch(url, 5, iter([b" wor", b"ld"]))  # a generator body goes chunked
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "11"
    assert tus.offset(url) == 11
    assert tus.get(url).content == b"hello world"
