"""`python -m ladon_deploy.runtime ...` is `ladon-run ...` (the form the Jetson container and the aarch64 runs use)."""
from ladon_deploy.runtime import entry_point

if __name__ == "__main__":
    entry_point()
