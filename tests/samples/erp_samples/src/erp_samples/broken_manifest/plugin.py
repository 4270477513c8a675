"""Never imported: discovery rejects it."""

from erp_plugins_core import PluginInterface


class Nothing(PluginInterface):
    pass
