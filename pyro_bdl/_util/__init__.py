"""Infrastructure every layer shares: argument checks, seeding, atomic files, checkpoints, progress bars,
deprecated import paths. Imports nothing else of pyro_bdl."""
