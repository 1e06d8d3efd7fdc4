"""Airflow adapters of b2cal: hooks, operators, triggers and the plugin with its web pages.

Every class here is a thin layer over the plain :mod:`b2cal` library, which holds the domain logic.
"""
