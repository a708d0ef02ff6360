"""Reports made from stored Results only: terminal tables, JSON (HTML comes later)."""
