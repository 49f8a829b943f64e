from django.urls import path
from rest_framework.routers import SimpleRouter

from .calendar import CalendarView
from .executions import ExecutionView
from .health import HealthView
from .schedules import SchedulePreviewView
from .stats import StatsView
from .tasks import TaskViewSet

router = SimpleRouter()
router.trailing_slash = "/?"  # the guide's paths have no trailing slash; accept both
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("executions/<uuid:pk>", ExecutionView.as_view(), name="execution"),
    path("schedules/preview", SchedulePreviewView.as_view(), name="schedule-preview"),
    path("stats", StatsView.as_view(), name="stats"),
    path("calendar", CalendarView.as_view(), name="calendar"),
    *router.urls,
]
