"""bptt: measure what truncating backpropagation through time does to a recurrent network."""

__version__ = "0.1.0"
