"""``python -m semask.train [preset] [--field value ...]``: same as ``semask-train``."""
from .cli import train_main

if __name__ == "__main__":
    train_main()
