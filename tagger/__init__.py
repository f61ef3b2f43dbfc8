"""product-tagger: tag e-commerce products with visual attributes from their photos."""

__version__ = "0.1.0"
