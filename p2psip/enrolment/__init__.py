"""Enrolment: the overlay CA and the way peers and users get certificates from it."""
