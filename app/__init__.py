"""Migrations and tooling for public.meta_assets_cache."""
