"""The synthetic web: a seeded crawl of realistic pages with planted faults and ground truth."""
