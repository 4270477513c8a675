"""A trusted, well-behaved plugin: answers in the host's process."""

from erp_plugins_core import PluginInterface


class Greeter(PluginInterface):
    def greet(self, prompt: str, context: dict) -> str:
        return f"{self.config['greeting']}, {prompt}!"
