"""Data only: the Maven pom that resolves the Kafka broker jars and the broker's log4j2 config."""
