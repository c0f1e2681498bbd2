"""torch.distributions subclasses for relaxed discrete variables."""

__all__: list = []
