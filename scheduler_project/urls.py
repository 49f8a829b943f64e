from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasks_app.web.calendar import calendar_page
from tasks_app.web.feed import calendar_feed

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    # A login for every user (the admin's refuses non-staff), for the calendar page.
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="admin/login.html",
            extra_context={"site_header": "Scheduler", "site_title": "Scheduler"},
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("tasks_app.api.urls")),
    path("calendar/", calendar_page, name="calendar-page"),
    path("calendar/<slug:token>.ics", calendar_feed, name="calendar-feed"),
]
