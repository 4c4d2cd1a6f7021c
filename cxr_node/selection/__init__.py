"""Which received images get a result: rules as data (rules, defaults, config), the words and
codes that name body parts and views (vocabulary, facts), the patient's age (age), the
warnings `config check` gives about a rule set (audit) and the header bits operators see for
each image (header)."""
