"""tus 1.0 and the IETF draft on the wire: the protocol table, HTTP framing, parsers."""
