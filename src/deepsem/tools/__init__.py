"""What sits outside the data flow: the shipped demo (:mod:`.demo`) and the gradient diagnostics (:mod:`.diagnose`)."""
