"""
RELOAD usages: the structures an application stores in the overlay.

A usage (RFC 6940 s5) defines Kinds and the wire format of their values.
These modules belong to the overlay layer: they build on
:mod:`p2psip.overlay`'s codec and may be imported by applications such as
:mod:`p2psip.sip`, while the overlay itself imports none of them.
"""
